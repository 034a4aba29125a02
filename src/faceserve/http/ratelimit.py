"""The rate-limit middleware: which budget a route spends, whose bucket, and the IETF RateLimit fields.

Budgets: `search` (search and forget: a face detection and embedding each), `upload` (uploads and every
other change), `read` (every GET: images, crops, listings). The bucket is the key's (by prefix) when a key
authorised the request, else the client address's; X-Forwarded-For is believed only from
FACESERVE_TRUSTED_PROXIES. Responses on limited routes carry RateLimit-Policy and RateLimit
(draft-ietf-httpapi-ratelimit-headers); past the budget the answer is 429 `rate_limited` with Retry-After.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from .. import metrics
from ..config import Settings
from ..core import token_buckets
from ..errors import RateLimited
from .access import current_key, route_key
from .appkeys import LIMITER
from .middleware import Handler

Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

_SEARCH_ROUTES = {("POST", "/api/face/search"), ("POST", "/api/face/sessions/{session_id}/forget")}
_UNLIMITED_ROUTES = {("GET", "/healthz")}
_FIELDS = web.RequestKey("ratelimit_fields", dict)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def budget_of(method: str, path: str) -> str | None:
    if (method, path) in _UNLIMITED_ROUTES:
        return None
    if (method, path) in _SEARCH_ROUTES:
        return "search"
    return "read" if method == "GET" else "upload"


@dataclass
class Limiter:
    budgets: dict[str, token_buckets.Buckets]
    trusted: tuple[Network, ...]
    policies: dict[str, str]  # budget -> its RateLimit-Policy field, made once

    @classmethod
    def from_settings(cls, settings: Settings) -> Limiter:
        share = 1.0 / max(1, settings.workers)  # each worker enforces its part (token_buckets.py)
        quotas = {
            "search": token_buckets.Quota.parse(settings.rate_limit_search),
            "upload": token_buckets.Quota.parse(settings.rate_limit_upload),
            "read": token_buckets.Quota.parse(settings.rate_limit_read),
        }
        trusted = tuple(
            ipaddress.ip_network(p.strip(), strict=False) for p in settings.trusted_proxies.split(",") if p.strip()
        )
        policies = {name: f'"{name}";q={q.requests};w={q.window_s}' for name, q in quotas.items()}
        return cls({name: token_buckets.Buckets(q, share) for name, q in quotas.items()}, trusted, policies)

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def client_address(self, request: web.Request) -> str:
        """The peer; behind trusted proxies, the rightmost X-Forwarded-For entry that is not one of them."""
        address = request.remote or ""
        if not self.trusted or not self._trusted(address):
            return address
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        while hops and self._trusted(address):
            address = hops.pop()
        return address




def middleware(limiter: Limiter) -> Middleware:
    """The limiter is bound here rather than looked up per request: this runs before every image served."""
    budgets: dict[web.AbstractRoute, str | None] = {}

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        try:
            budget = budgets[route]
        except KeyError:
            key = route_key(route)
            budget = budgets[route] = None if key is None else budget_of(*key)
        if budget is None:
            return await handler(request)
        return await _limited(limiter, budget, request, handler)

    return limit


async def _limited(limiter: Limiter, budget: str, request: web.Request, handler: Handler) -> web.StreamResponse:
    key = current_key(request)
    identity = f"key:{key.prefix}" if key is not None else f"ip:{limiter.client_address(request)}"
    decision = limiter.budgets[budget].take(identity)
    fields = {
        "RateLimit-Policy": limiter.policies[budget],
        "RateLimit": f'"{budget}";r={decision.remaining};t={decision.reset_s}',
    }
    if not decision.allowed:
        fields["Retry-After"] = str(decision.retry_after_s)
        metrics.RATE_LIMITED.labels(budget).inc()
        raise RateLimited(f"the {budget} budget of this client is spent; retry in {decision.retry_after_s} s", fields)
    request[_FIELDS] = fields
    return await handler(request)


async def _add_fields(request: web.Request, response: web.StreamResponse) -> None:
    fields = request.get(_FIELDS)
    if fields:
        response.headers.update(fields)


def install(app: web.Application, limiter: Limiter) -> None:
    app[LIMITER] = limiter
    app.on_response_prepare.append(_add_fields)
