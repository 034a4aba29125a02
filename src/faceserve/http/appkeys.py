"""Typed application keys: every part a handler reaches through the app, in one place."""

from aiohttp import web

from ..core.services import Services
from .urls import UrlPolicy

SERVICES = web.AppKey("services", Services)
URLS = web.AppKey("urls", UrlPolicy)
