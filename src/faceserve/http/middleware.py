"""One place where errors become the JSON envelope: domain errors, aiohttp's HTTP errors, and crashes."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..config import Settings
from ..db.recovery import is_database_unavailable
from ..errors import Busy, FaceServeError, InsufficientStorage, RateLimited, Unauthorized, Unavailable
from .appkeys import REQUEST_ID, SERVICES
from .common import json_line

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str) -> web.Response:
    response = web.json_response(
        {"success": False, "error": {"code": code, "message": message}}, status=status, dumps=json_line
    )
    # an error is never cached like an image is
    response.headers["Cache-Control"] = "no-store"
    return response


def _snake(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"


def _settings(request: web.Request) -> Settings:
    services = request.app.get(SERVICES)
    return services.settings if services is not None else Settings()


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except asyncio.CancelledError:
        # a server with handler_cancellation cancels the handler of a client that went away
        if _client_gone(request):
            log.info("client went away during %s %s", request.method, request.path)
        raise
    except FaceServeError as exc:
        response = error_response(exc.status, exc.code, exc.message)
        if isinstance(exc, (Busy, Unavailable)):
            response.headers["Retry-After"] = str(exc.retry_after)
        elif isinstance(exc, InsufficientStorage):
            response.headers["Retry-After"] = str(_settings(request).storage_full_retry_after_s)
        elif isinstance(exc, Unauthorized):
            response.headers["WWW-Authenticate"] = 'Bearer realm="faceserve"'
        elif isinstance(exc, RateLimited):
            response.headers.update(exc.headers)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and 304s are answers, not errors
        code = "payload_too_large" if exc.status == 413 else _snake(exc.reason)
        message = exc.reason if exc.status != 413 else "request body is too large"
        return error_response(exc.status, code, message)
    except Exception as exc:
        if isinstance(exc, ConnectionError) and _client_gone(request):
            # a phone losing signal mid-upload is normal life, not a server error
            log.info("client went away during %s %s", request.method, request.path)
            return error_response(400, "client_closed_request", "the client closed the connection")
        if is_database_unavailable(exc):
            # the database is down or restarting (db_recovery.py): normal life for a moment, not a crash
            log.warning("%s %s: database unavailable (%s)", request.method, request.path, type(exc).__name__)
            response = error_response(503, Unavailable.code, "the database is unavailable; try again shortly")
            response.headers["Retry-After"] = str(_settings(request).db_retry_after_s)
            return response
        request_id = request.get(REQUEST_ID) or secrets.token_hex(6)  # observability's, when it ran
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, request_id)
        return error_response(500, "internal_error", f"unexpected server error (request {request_id})")
