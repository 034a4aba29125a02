"""What a route is besides its handler: who may call it and which rate budget it spends, kept on the route.

Every route is declared once in http/routes.py as a Route; registration, the access guard, the rate limiter
and the test against openapi.json all read those declarations, so a route cannot exist without its access
and its budget (the fields have no defaults, and odd values are refused at import).

Access is a scope a key must hold (core/api_keys.SCOPES), or:
- PUBLIC: no key (health checks, the web page, the contract);
- SIGNED: image bytes; a signed URL is the credential (serving.check_access verifies it), no key;
- LEGACY: old /storage/... links: open while image URLs are unsigned (public images or auth off), else
  they need a key with the search scope like any API call. Imported trees keep guessable names
  (IMG_0001.jpg), so an open redirect to a signed URL would hand out every photo to whoever counts.
Budgets (http/ratelimit.py): SEARCH (a face detection and embedding each), UPLOAD (uploads and every other
change), READ (images, crops, listings), UNLIMITED (health checks).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial, update_wrapper

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..core import api_keys

PUBLIC = "public"
SIGNED = "signed"
LEGACY = "legacy"
ACCESS_KINDS = (*api_keys.SCOPES, PUBLIC, SIGNED, LEGACY)

SEARCH = "search"
UPLOAD = "upload"
READ = "read"
UNLIMITED = "unlimited"
BUDGETS = (SEARCH, UPLOAD, READ)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str  # GET also answers HEAD
    path: str
    handler: Handler
    access: str
    budget: str
    operation: str  # its operationId in openapi.json
    head_operation: str | None = None  # where the contract documents HEAD on its own

    def __post_init__(self) -> None:
        if self.access not in ACCESS_KINDS:
            raise ValueError(f"{self.method} {self.path}: access {self.access!r} is none of {ACCESS_KINDS}")
        if self.budget not in (*BUDGETS, UNLIMITED):
            raise ValueError(f"{self.method} {self.path}: budget {self.budget!r} is none of {BUDGETS}")


@dataclass(frozen=True)
class Layer:
    """A middleware and the routes it has work on. applies None: every request, 404s and 405s included (an
    app middleware). Otherwise it is wrapped around the handlers of the routes it applies to when they are
    registered, in the order given, inside the app middlewares: a route it has nothing to do for (no id in
    its path, no key to check, no budget) does not pass through it at all. That is aiohttp's own composition
    (a partial per middleware), done once per route instead of being skipped per request."""

    name: str
    middleware: Middleware
    applies: Callable[[Route], bool] | None = None


_TABLE = web.AppKey("route_table", dict)


def wrapped(route: Route, layers: Sequence[Layer]) -> Handler:
    """The route's handler inside the route layers that apply to it (the first given is the outermost)."""
    handler = route.handler
    for layer in reversed(layers):
        if layer.applies is not None and layer.applies(route):
            handler = update_wrapper(partial(layer.middleware, handler=handler), route.handler)
    return handler


def register(app: web.Application, routes: tuple[Route, ...], layers: Sequence[Layer] = ()) -> None:
    """Each route onto the router (a GET with its HEAD) inside its route layers, and the aiohttp route ->
    declaration map the guard and the limiter read per request."""
    declared: dict[tuple[str, str], Route] = {}
    for route in routes:
        if (route.method, route.path) in declared:
            raise ValueError(f"{route.method} {route.path} is declared twice")
        declared[(route.method, route.path)] = route
        handler = wrapped(route, layers)
        if route.method == "GET":
            app.router.add_get(route.path, handler)
        else:
            app.router.add_route(route.method, route.path, handler)
    table: dict[web.AbstractRoute, Route] = {}
    for registered in app.router.routes():
        key = route_key(registered)
        if key is not None:
            table[registered] = declared[key]
    app[_TABLE] = table


def route_key(route: web.AbstractRoute) -> tuple[str, str] | None:
    resource = route.resource
    if resource is None:
        return None
    return ("GET" if route.method == "HEAD" else route.method, resource.canonical)


def declared(request: web.Request) -> Route | None:
    """This request's route as declared; None when no route matched (its 404/405 tells nothing)."""
    return request.app[_TABLE].get(request.match_info.route)
