"""One access-log line per request, on the `faceserve.access` logger: text, or JSON fields that
logs.JsonFormatter puts on the line. What is logged: method, route template, path without its query
(signed URLs carry signatures there), status, bytes sent (headers included, as aiohttp counts them), milliseconds, request id, the API key's public
prefix when one was used. Never a header value, a body, a key or a face.

Lines are handed to the handlers in batches (a line waits at most FLUSH_AFTER_S, or until FLUSH_AT are
waiting): a plain stream handler (the console's) then formats each and writes them all with one write and
one flush, where one write per line cost a 304 most of its time again (RESULTS.md, "The image endpoint's
cost per request"). Order, format and handlers are logging's own; other handlers (say, a test's capture) get each
record as logger.info would give it. What waits is written at the loop's next turn, at exit, or lost with
the process on a SIGKILL."""

from __future__ import annotations

import asyncio
import atexit
import logging
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, Request, StreamResponse

from .access import current_key
from .observability import request_id_of, route_of

LOGGER = logging.getLogger("faceserve.access")
FLUSH_AFTER_S = 0.05
FLUSH_AT = 256


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
        """logger.info, batched, and without its walk up the stack for the caller's file and line (a third
        of a line's cost here): an access line has no caller to name, and neither log format shows one."""
        logger = self.logger
        if logger.isEnabledFor(logging.INFO):
            record = logger.makeRecord(
                logger.name, logging.INFO, "(unknown file)", 0, message, args, None, "(unknown function)", extra
            )
            _PENDING.add(logger, record)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class _Pending:
    """This process's access lines not yet handed to the handlers (one loop, so no lock)."""

    def __init__(self) -> None:
        self._records: list[logging.LogRecord] = []
        self._logger = LOGGER
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def add(self, logger: logging.Logger, record: logging.LogRecord) -> None:
        if logger is not self._logger:
            self.flush()
            self._logger = logger
        self._records.append(record)
        if len(self._records) >= FLUSH_AT:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: nothing would come back to write it
            self.flush()
            return
        if self._timer is None or self._timer_loop is not loop:  # none yet, or on a loop that has ended
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_later(FLUSH_AFTER_S, self.flush)
            self._timer_loop = loop

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        records, self._records = self._records, []
        if records:
            _handle_all(self._logger, records)


def _handle_all(logger: logging.Logger, records: list[logging.LogRecord]) -> None:
    """What logger.handle does for each record, with one write per plain stream handler for them all."""
    if logger.disabled:
        return
    records = [r for r in records if logger.filter(r)]
    holder: logging.Logger | None = logger
    while holder is not None and records:
        for handler in holder.handlers:
            taken = [r for r in records if r.levelno >= handler.level]
            if type(handler).emit is logging.StreamHandler.emit:
                _write_all(handler, taken)  # type: ignore[arg-type]  # a StreamHandler, by its emit
            else:
                for record in taken:
                    handler.handle(record)
        holder = holder.parent if holder.propagate else None


def _write_all(handler: logging.StreamHandler[Any], records: list[logging.LogRecord]) -> None:
    lines = []
    for record in records:
        if handler.filter(record):
            try:
                lines.append(handler.format(record))
            except Exception:  # noqa: BLE001 - as Handler.emit: reported by handleError, the others still go
                handler.handleError(record)
    if not lines:
        return
    handler.acquire()
    try:
        handler.stream.write(handler.terminator.join(lines) + handler.terminator)
        handler.flush()
    except Exception:  # noqa: BLE001 - as Handler.emit: handleError reports it, serving goes on
        handler.handleError(records[-1])
    finally:
        handler.release()


_PENDING = _Pending()
atexit.register(_PENDING.flush)  # before logging's own shutdown, registered earlier, closes the handlers
