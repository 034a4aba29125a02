"""Typed application keys: every part a handler reaches through the app, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..core.services import Services
from .urls import UrlPolicy

if TYPE_CHECKING:  # page.py reads its key from here; its type only matters to the type checker
    from .page import Page

SERVICES = web.AppKey("services", Services)
URLS = web.AppKey("urls", UrlPolicy)
PAGE: web.AppKey[Page] = web.AppKey("page")
