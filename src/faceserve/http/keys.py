"""/api/face/keys for admins: create (the key is shown in this answer only), list, revoke.

An admin key bound to sessions manages only keys bound to some of its own sessions, so it can never make
a key that sees more than it does.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from .. import inputs
from ..core import api_keys
from ..errors import BadRequest, FaceServeError, Forbidden
from .access import ACCESS, current_key
from .appkeys import SERVICES
from .common import number, ok
from .parsing import read_json


class KeyNotFound(FaceServeError):
    status = 404
    code = "key_not_found"


def _within_creator(request: web.Request, session_ids: tuple[int, ...] | list[int] | None) -> bool:
    creator = current_key(request)
    if creator is None or creator.session_ids is None:
        return True
    return session_ids is not None and set(session_ids) <= set(creator.session_ids)


async def create_key(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest('body must be a JSON object like {"scopes": ["search"], "sessions": [7], "name": "guests"}')
    scopes, sessions = body.get("scopes", ["search"]), body.get("sessions")
    name, expires_in, days = body.get("name", ""), body.get("expires_in"), body.get("expires_in_days")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise BadRequest("scopes must be a list of strings")
    if sessions is not None and (
        not isinstance(sessions, list)
        or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s < 2**63 for s in sessions)
    ):
        raise BadRequest("sessions must be a list of session ids")
    if not isinstance(name, str) or len(name) > 200:
        raise BadRequest("name must be a string of at most 200 characters")
    inputs.storable_text(name, "name")
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36500):
        raise BadRequest("expires_in_days must be a whole number of days from 1 to 36500")
    if days is not None and expires_in is not None:
        raise BadRequest("give expires_in or expires_in_days, not both")
    if not _within_creator(request, sessions):
        raise Forbidden("a key bound to sessions can only make keys for some of its own sessions")
    try:
        lifetime: timedelta | None = None if expires_in is None else api_keys.parse_duration(str(expires_in))
        if days is not None:
            lifetime = timedelta(days=days)
        text, record = await api_keys.create(request.app[SERVICES].pool, scopes, name, sessions, lifetime)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return ok({"key": text, **record.as_json()}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """Every key this admin may manage; ?session=7: only keys bound to session 7 (an event's guest links)."""
    session = number(request.query.get("session"), "session", int, 1, 2**63 - 1)
    keys = await api_keys.list_keys(request.app[SERVICES].pool)
    shown = [
        k
        for k in keys
        if _within_creator(request, k.session_ids)
        and (session is None or (k.session_ids is not None and session in k.session_ids))
    ]
    return ok({"keys": [k.as_json() for k in shown]})


async def revoke_key(request: web.Request) -> web.Response:
    prefix = request.match_info["prefix"]
    pool = request.app[SERVICES].pool
    record = await api_keys.get(pool, prefix)
    if record is None:
        raise KeyNotFound(f"no key has the prefix {prefix!r}")
    if not _within_creator(request, record.session_ids):
        raise Forbidden("a key bound to sessions can only revoke keys for some of its own sessions")
    revoked = await api_keys.revoke(pool, prefix)
    request.app[ACCESS].keys.forget(prefix)
    assert revoked is not None
    return ok(revoked.as_json())
