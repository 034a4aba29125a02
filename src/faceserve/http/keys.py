"""Typed application keys: how handlers reach the service's parts."""

from aiohttp import web

from ..services import Services

SERVICES = web.AppKey("services", Services)
