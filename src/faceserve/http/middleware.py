"""One place where errors become the JSON envelope: domain errors, aiohttp's HTTP errors, and crashes."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import Busy, FaceServeError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str) -> web.Response:
    response = web.json_response(
        {"success": False, "error": {"code": code, "message": message}}, status=status
    )
    # an error is never cached like an image is
    response.headers["Cache-Control"] = "no-store"
    return response


def _snake(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except FaceServeError as exc:
        response = error_response(exc.status, exc.code, exc.message)
        if isinstance(exc, Busy):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and 304s are answers, not errors
        code = "payload_too_large" if exc.status == 413 else _snake(exc.reason)
        message = exc.reason if exc.status != 413 else "request body is too large"
        return error_response(exc.status, code, message)
    except Exception:
        request_id = request.get("request_id") or secrets.token_hex(6)  # observability's, when it ran
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, request_id)
        return error_response(500, "internal_error", f"unexpected server error (request {request_id})")
