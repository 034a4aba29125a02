"""One access-log line per request, on the `faceserve.access` logger: text, or JSON fields that
logs.JsonFormatter puts on the line. What is logged: method, route template, path without its query
(signed URLs carry signatures there), status, bytes sent (headers included, as aiohttp counts them), milliseconds, request id, the API key's public
prefix when one was used. Never a header value, a body, a key or a face."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, Request, StreamResponse

from .access import current_key
from .observability import request_id_of, route_of

LOGGER = logging.getLogger("faceserve.access")


class AccessLogger(AbstractAccessLogger):
    """aiohttp calls log() once a response is sent; log_format is "text" or "json" (--log-format)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        key = current_key(request) if isinstance(request, Request) else None  # the key that authorised it
        if self.log_format != "json":
            # the text line straight from its values: no dict of fields for a formatter that does not read it
            self._info(
                '%s "%s %s" %s %s bytes %.1fms %s%s',
                (
                    request.remote, request.method, request.path, response.status, response.body_length,
                    round(time * 1000, 2), request_id_of(request), "" if key is None else f" key={key.prefix}",
                ),
            )
            return
        fields: dict[str, Any] = {
            "method": request.method,
            "route": route_of(request),
            "path": request.path,
            "status": response.status,
            "bytes": response.body_length,
            "ms": round(time * 1000, 2),
            "request_id": request_id_of(request),
            "remote": request.remote,
        }
        if key is not None:
            fields["key_prefix"] = key.prefix
        self._info("access", (), {"fields": fields})

    def _info(self, message: str, args: tuple[Any, ...], extra: dict[str, Any] | None = None) -> None:
        """logger.info without its walk up the stack for the caller's file and line (a third of a line's
        cost here): an access line has no caller to name, and neither log format shows one."""
        logger = self.logger
        if logger.isEnabledFor(logging.INFO):
            record = logger.makeRecord(
                logger.name, logging.INFO, "(unknown file)", 0, message, args, None, "(unknown function)", extra
            )
            logger.handle(record)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
