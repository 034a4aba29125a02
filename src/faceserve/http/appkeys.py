"""Typed application keys of the parts every handler reaches: the services and the URL policy; and the
request's id (observability.py sets it, the error envelope names it). Parts of one module keep their key
there (access.ACCESS, page.PAGE)."""

from __future__ import annotations

from aiohttp import web

from ..core.services import Services
from .urls import UrlPolicy

SERVICES = web.AppKey("services", Services)
URLS = web.AppKey("urls", UrlPolicy)
REQUEST_ID = web.RequestKey("request_id", str)
