"""Typed application keys: every part a handler reaches through the app, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..core.services import Services
from .urls import UrlPolicy

if TYPE_CHECKING:  # these modules read their keys from here; the types only matter to the type checker
    from .access import AccessState
    from .page import Page
    from .ratelimit import Limiter

SERVICES = web.AppKey("services", Services)
URLS = web.AppKey("urls", UrlPolicy)
PAGE: web.AppKey[Page] = web.AppKey("page")
ACCESS: web.AppKey[AccessState] = web.AppKey("access")
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter")
