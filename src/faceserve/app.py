"""The aiohttp application: routes, the error middleware, and the services opened in cleanup_ctx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from .config import Settings
from .core import privacy
from .core.services import open_services
from .http import (
    access,
    docs,
    downloads,
    forget,
    health,
    images,
    keys,
    middleware,
    observability,
    page,
    people,
    qr,
    ratelimit,
    route_params,
    search,
    sessions,
    setup,
)
from .http.appkeys import PAGE, SERVICES, URLS
from .http.urls import UrlPolicy
from .vision.engine import FaceEngine

# multipart framing and small fields on top of the largest accepted file
_BODY_OVERHEAD = 1024 * 1024


def create_app(
    settings: Settings, engine: FaceEngine | None = None, sweep_partial_uploads: bool = True
) -> web.Application:
    # limits after access: the key (when there is one) names the bucket
    limiter = ratelimit.Limiter.from_settings(settings)
    guards = [access.guard, ratelimit.middleware(limiter)] if settings.rate_limits else [access.guard]
    app = web.Application(
        middlewares=[observability.observe, middleware.errors, route_params.parse_route_ids, *guards],
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

    app.cleanup_ctx.append(services_ctx)
    app.cleanup_ctx.append(expire_sessions_ctx)
    access.install(app, settings)  # its context runs after the services'
    ratelimit.install(app, limiter)
    app.cleanup_ctx.append(observability.sampling)
    app[URLS] = UrlPolicy.from_settings(settings)
    app[PAGE] = page.load(settings)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/", page.index)  # the web page; needs no key, it asks for one
    app.router.add_get("/static/{version}/{name}", page.static_file)
    app.router.add_post("/api/face/sessions", sessions.create_session)
    app.router.add_get("/api/face/sessions", sessions.list_sessions)
    app.router.add_get("/api/face/sessions/{session_id}", sessions.show_session)
    app.router.add_delete("/api/face/sessions/{session_id}", sessions.delete_session)
    app.router.add_post("/api/face/sessions/{session_id}/images", images.upload_images)
    app.router.add_get("/api/face/sessions/{session_id}/images", images.list_images)
    app.router.add_get("/api/face/image/{image_id}", downloads.serve_image)  # HEAD too
    app.router.add_delete("/api/face/image/{image_id}", images.delete_image)
    app.router.add_get("/api/face/face/{face_id}", downloads.serve_face_crop)  # HEAD too
    app.router.add_get("/api/face/resolve", images.resolve)
    app.router.add_get("/storage/face_sessions/{session_id}/db/{name}", images.legacy_redirect)
    app.router.add_post("/api/face/search", search.search_faces)
    app.router.add_post("/api/face/sessions/{session_id}/forget", forget.forget)
    app.router.add_post("/api/face/keys", keys.create_key)
    app.router.add_get("/api/face/keys", keys.list_keys)
    app.router.add_delete("/api/face/keys/{prefix}", keys.revoke_key)
    app.router.add_get("/openapi.json", docs.openapi_json)
    app.router.add_get("/docs", docs.docs_page)
    app.router.add_get("/metrics", observability.metrics_page)
    # the same search with the session in the path, where a balancer can route by it
    app.router.add_post("/api/face/sessions/{session_id}/search", search.search_faces)
    app.router.add_get("/api/face/sessions/{session_id}/people", people.list_people)
    app.router.add_get("/api/face/sessions/{session_id}/people/{person_id}/images", people.person_images)
    app.router.add_post("/api/face/sessions/{session_id}/people/{person_id}/merge", people.merge_people)
    app.router.add_post("/api/face/sessions/{session_id}/people/{person_id}/split", people.split_person)
    # running an event from the page: rename it, QR codes of guest links, the one-time setup link
    app.router.add_patch("/api/face/sessions/{session_id}", sessions.rename_session)
    app.router.add_post("/api/face/qr", qr.make_qr)
    app.router.add_post("/api/face/setup", setup.exchange_setup_token)
    return app
