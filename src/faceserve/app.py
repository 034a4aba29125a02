"""The aiohttp application: the middlewares, the routes of http/routes.py, and the services opened in cleanup_ctx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from .config import Settings
from .core import privacy
from .core.services import open_services
from .http import access, middleware, observability, page, ratelimit, route_params, routes, routing, served
from .http.appkeys import SERVICES, URLS
from .http.urls import UrlPolicy
from .vision.engine import FaceEngine

# multipart framing and small fields on top of the largest accepted file
_BODY_OVERHEAD = 1024 * 1024


def middleware_chain(settings: Settings) -> list[routing.Layer]:
    """What a request passes through, outermost first: the id, timing and error envelope of every request,
    then the layers wrapped around the routes they have work on (routing.Layer). The limits come after
    access: the key (when there is one) names the bucket. benchmarks/middleware_cost.py times each."""
    limiter = ratelimit.Limiter.from_settings(settings)
    chain = [
        routing.Layer("observe", observability.observe),
        routing.Layer("errors", middleware.errors),
        routing.Layer("route ids", route_params.parse_route_ids, route_params.has_ids),
    ]
    if settings.rate_limits:
        # where the guard may ask Postgres about a key: an address presenting unknown ones is slowed there
        chain.append(routing.Layer("failed-auth budget", ratelimit.failed_auth_middleware(limiter), access.may_need_key))
    chain.append(routing.Layer("guard", access.guard, access.may_need_key))
    if settings.rate_limits:
        chain.append(routing.Layer("rate limit", ratelimit.middleware(limiter), ratelimit.spends_budget))
    return chain


def create_app(
    settings: Settings, engine: FaceEngine | None = None, sweep_partial_uploads: bool = True
) -> web.Application:
    chain = middleware_chain(settings)
    app = web.Application(
        middlewares=[layer.middleware for layer in chain if layer.applies is None],
        client_max_size=settings.max_upload_bytes + _BODY_OVERHEAD,
    )

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_services(settings, engine, sweep_partial_uploads) as services:
            app[SERVICES] = services
            yield

    async def expire_sessions_ctx(app: web.Application) -> AsyncIterator[None]:
        services = app[SERVICES]
        every_s = settings.session_expiry_check_s
        task = asyncio.create_task(privacy.delete_expired_forever(services, every_s))
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def end_live_streams(app: web.Application) -> None:
        # before the server waits for its requests: an open stream would hold shutdown until its timeout
        if SERVICES in app:
            app[SERVICES].live.close()

    app.cleanup_ctx.append(services_ctx)
    served.install(app, settings)  # subscribes once the services are open
    app.on_shutdown.append(end_live_streams)
    app.cleanup_ctx.append(expire_sessions_ctx)
    access.install(app, settings)  # its context runs after the services'
    if settings.rate_limits:
        ratelimit.install(app)  # the RateLimit fields: none to add with the limits off
    app.cleanup_ctx.append(observability.sampling)
    app[URLS] = UrlPolicy.from_settings(settings)
    app[page.PAGE] = page.load(settings)
    routing.register(app, routes.ROUTES, [layer for layer in chain if layer.applies is not None])
    return app
