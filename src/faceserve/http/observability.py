"""Per request: a request id (the client's X-Request-ID when it is sane, else a new one) and one latency
observation by route template and status. GET /metrics renders every worker's samples."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import Histogram

from .. import metrics
from ..core.services import Services
from .appkeys import REQUEST_ID, SERVICES
from .middleware import Handler

REQUEST_ID_HEADER = "X-Request-ID"
# a client's id is echoed into headers and logs: only short plain tokens are taken as they are
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# requests no route matched are counted under one name: random paths must not make new series
UNMATCHED = "unmatched"
# request ids name requests in logs and guard nothing: a random prefix per process (workers are spawned,
# so each draws its own) and a counter, cheaper than random bytes per request
_ID_PREFIX = f"{random.getrandbits(32):08x}"
_ids = itertools.count(1)

# every answer's time; counted in memory per request and handed to the histogram in bulk (metrics.RequestTimes)
HTTP_REQUESTS = metrics.RequestTimes(
    Histogram(
        "faceserve_http_request_duration_seconds",
        "Time to answer a request, by method, route template and status (its _count is the request count)",
        ["method", "route", "status"],
        buckets=metrics.LATENCY_BUCKETS,
    ),
    metrics.LATENCY_BUCKETS,
)


def request_id_of(request: web.BaseRequest) -> str:
    return request.get(REQUEST_ID) or ""


def route_of(request: web.BaseRequest) -> str:
    try:
        resource = request.match_info.route.resource  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):  # never reached the router (a BaseRequest, or a 400 of the parser)
        return UNMATCHED
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if given and _SANE_REQUEST_ID.fullmatch(given) else f"{_ID_PREFIX}{next(_ids):08x}"
    request[REQUEST_ID] = request_id
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:  # a body streamed by its handler (over 512 KiB) has sent its headers
            response.headers[REQUEST_ID_HEADER] = request_id
        return response
    except web.HTTPException as exc:  # redirects and 304s raised by handlers (errors are answered inside)
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = request_id
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away first (nginx's number for it)
        raise
    finally:
        HTTP_REQUESTS.observe(request.method, route_of(request), status, time.perf_counter() - start)


def sample(services: Services) -> None:
    """Hand over counted request times and set the gauges of this process's live state (cheap: counters
    and a dict walk)."""
    HTTP_REQUESTS.flush()
    services.admission.sample()
    services.models.sample()
    services.sample_pool()
    services.indexes.sample()
    services.live.sample()


async def metrics_page(request: web.Request) -> web.Response:
    services = request.app.get(SERVICES)
    if services is not None:
        sample(services)  # this process's live state as of now; the others' as of their last sample
    else:
        HTTP_REQUESTS.flush()
    body = await asyncio.to_thread(metrics.render)
    response = web.Response(body=body, headers={"Cache-Control": "no-store"})
    response.headers["Content-Type"] = metrics.CONTENT_TYPE
    return response


async def sampling(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: sample the live gauges of this process every metrics_sample_s while it serves."""

    async def loop() -> None:
        while True:
            services = app.get(SERVICES)
            if services is not None:
                sample(services)
                await asyncio.sleep(services.settings.metrics_sample_s)
            else:
                await asyncio.sleep(1)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    HTTP_REQUESTS.flush()  # the last requests' times, before the process goes
