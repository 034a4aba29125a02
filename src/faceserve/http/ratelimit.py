"""The rate-limit middleware: which budget a route spends, whose bucket, and the IETF RateLimit fields.

Each route declares the budget it spends (http/routes.py). The bucket is the key's (by prefix) when a key
authorised the request, else the client address's; X-Forwarded-For is believed only from
FACESERVE_TRUSTED_PROXIES. Responses on limited routes carry RateLimit-Policy and RateLimit
(draft-ietf-httpapi-ratelimit-headers); past the budget the answer is 429 `rate_limited` with Retry-After.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Counter

from ..config import Settings
from ..core import token_buckets
from ..errors import RateLimited, Unauthorized
from .access import current_key, presents_known_key
from .middleware import Handler
from .routing import UNLIMITED, Route, declared

_FIELDS = web.RequestKey("ratelimit_fields", dict)
RATE_LIMITED = Counter(
    "faceserve_rate_limited_total", "Requests refused with 429 by a rate limit, by budget", ["budget"]
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Limiter:
    budgets: dict[str, token_buckets.Buckets]
    trusted: tuple[Network, ...]
    policies: dict[str, str]  # budget -> its RateLimit-Policy field, made once
    failed_auth: token_buckets.Buckets  # 401s by client address

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
        failed_auth = token_buckets.Buckets(token_buckets.Quota.parse(settings.rate_limit_failed_auth), share)
        return cls(
            {name: token_buckets.Buckets(q, share) for name, q in quotas.items()}, trusted, policies, failed_auth
        )

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




def spends_budget(route: Route) -> bool:
    """Whether the route passes through the limiter at all (routing.Layer)."""
    return route.budget != UNLIMITED


def middleware(limiter: Limiter) -> Middleware:
    """The limiter is bound here rather than looked up per request: this runs before every image served."""

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = declared(request)
        if route is None or route.budget == UNLIMITED:
            return await handler(request)
        return await _limited(limiter, route.budget, request, handler)

    return limit


def failed_auth_middleware(limiter: Limiter) -> Middleware:
    """Before the guard: an address that keeps presenting unknown keys is answered 429 before its next key
    costs a query (a key this process holds as valid still passes: a venue's guests share one address)."""

    @web.middleware
    async def limit_failed_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        address = limiter.client_address(request)
        wait_s = limiter.failed_auth.waiting_s(address)
        if wait_s and not presents_known_key(request):
            RATE_LIMITED.labels("failed_auth").inc()
            raise RateLimited(
                f"too many requests with unknown keys from this address; retry in {wait_s} s",
                {"Retry-After": str(wait_s)},
            )
        try:
            return await handler(request)
        except Unauthorized:
            limiter.failed_auth.take(address)
            raise

    return limit_failed_auth


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
        RATE_LIMITED.labels(budget).inc()
        raise RateLimited(f"the {budget} budget of this client is spent; retry in {decision.retry_after_s} s", fields)
    request[_FIELDS] = fields
    return await handler(request)


async def _add_fields(request: web.Request, response: web.StreamResponse) -> None:
    fields = request.get(_FIELDS)
    if fields:
        response.headers.update(fields)


def install(app: web.Application) -> None:
    app.on_response_prepare.append(_add_fields)
