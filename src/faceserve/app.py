"""The aiohttp application: routes, the error middleware, and the services opened in cleanup_ctx."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .config import Settings
from .faces import FaceEngine
from .http import derivatives, docs, health, images, middleware, observability, search, serving, sessions
from .http.keys import SERVICES
from .http.urls import URLS, UrlPolicy
from .services import open_services

# multipart framing and small fields on top of the largest accepted file
_BODY_OVERHEAD = 1024 * 1024


def create_app(
    settings: Settings, engine: FaceEngine | None = None, sweep_partial_uploads: bool = True
) -> web.Application:
    app = web.Application(
        middlewares=[observability.observe, middleware.errors], client_max_size=settings.max_upload_bytes + _BODY_OVERHEAD
    )

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_services(settings, engine, sweep_partial_uploads) as services:
            app[SERVICES] = services
            yield

    app.cleanup_ctx.append(services_ctx)
    app.cleanup_ctx.append(observability.sampling)
    app[serving.SERVED_FILES] = serving.ServedFileCache(settings.served_cache_entries, settings.served_recheck_s)
    app[URLS] = UrlPolicy.from_settings(settings)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_post("/api/face/sessions", sessions.create_session)
    app.router.add_get("/api/face/sessions", sessions.list_sessions)
    app.router.add_get("/api/face/sessions/{session_id}", sessions.show_session)
    app.router.add_delete("/api/face/sessions/{session_id}", sessions.delete_session)
    app.router.add_post("/api/face/sessions/{session_id}/images", images.upload_images)
    app.router.add_get("/api/face/sessions/{session_id}/images", images.list_images)
    app.router.add_get("/api/face/image/{image_id}", serving.serve_image)  # HEAD too
    app.router.add_delete("/api/face/image/{image_id}", images.delete_image)
    app.router.add_get("/api/face/face/{face_id}", derivatives.serve_face_crop)  # HEAD too
    app.router.add_get("/api/face/resolve", images.resolve)
    app.router.add_get("/storage/face_sessions/{session_id}/db/{name}", images.legacy_redirect)
    app.router.add_post("/api/face/search", search.search_faces)
    app.router.add_get("/openapi.json", docs.openapi_json)
    app.router.add_get("/docs", docs.docs_page)
    app.router.add_get("/metrics", observability.metrics_page)
    return app
