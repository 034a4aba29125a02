"""People of a session: list them, page through a person's photos, and an organiser's merge and split."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import db, layout
from ..core import face_sessions, people
from ..errors import BadRequest
from .appkeys import SERVICES
from .common import face_url, image_url, ok, query_int
from .parsing import read_json
from .route_params import route_id

_MAX_ID = 2**63 - 1


def person_json(request: web.Request, person: db.Person) -> dict[str, Any]:
    return {
        "person_id": person.id,
        "face_count": person.face_count,
        "image_count": person.image_count,
        "cover_face_id": person.cover_face_id,
        "cover_url": None if person.cover_face_id is None else face_url(request, person.cover_face_id),
    }


def _people_cursor(raw: str | None) -> tuple[int, int] | None:
    """`after` of the people listing: the `next_after` of the page before, "<image_count>.<person_id>"."""
    if raw is None or raw == "":
        return None
    count, _, person = raw.partition(".")
    if not (count.isascii() and count.isdigit() and person.isascii() and person.isdigit()):
        raise BadRequest("after must be the next_after of the page before")
    if int(count) > 2**31 or int(person) > _MAX_ID:
        raise BadRequest("after must be the next_after of the page before")
    return int(count), int(person)


async def list_people(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    settings = services.settings
    session_id = route_id(request, "session_id")
    await face_sessions.require_session(services, session_id)
    limit = query_int(request, "limit", settings.page_default_limit, 1, settings.page_max_limit)
    found = await db.list_people(services.pool, session_id, _people_cursor(request.query.get("after")), limit)
    next_after = f"{found[-1].image_count}.{found[-1].id}" if len(found) == limit else None
    return ok({"people": [person_json(request, p) for p in found], "next_after": next_after})


async def person_images(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    settings = services.settings
    session_id = route_id(request, "session_id")
    person = await people.require_person(services, session_id, route_id(request, "person_id"))
    limit = query_int(request, "limit", settings.page_default_limit, 1, settings.page_max_limit)
    after = query_int(request, "after", 0, 0, _MAX_ID)
    found = await db.person_images(services.pool, person.id, after, limit)
    return ok(
        {
            "person": person_json(request, person),
            "images": [
                {
                    "identity": layout.identity(session_id, image.stored_name),
                    "image_id": image.image_id,
                    "url": image_url(request, image.image_id),
                    "face_id": image.face_id,
                    "box": [round(v, 1) for v in image.box],
                    "quality": image.quality,
                    "face_url": face_url(request, image.face_id),
                }
                for image in found
            ],
            "next_after": found[-1].image_id if len(found) == limit else None,
        }
    )


async def _json_body(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _an_id(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_ID:
        raise BadRequest(f"{name} must be a positive integer id")
    return value


async def merge_people(request: web.Request) -> web.Response:
    """POST .../people/{person_id}/merge {"other": id}: the other person's faces become this one's."""
    services = request.app[SERVICES]
    session_id = route_id(request, "session_id")
    person_id = route_id(request, "person_id")
    other = _an_id((await _json_body(request)).get("other"), "other")
    merged = await people.merge_people(services, session_id, person_id, other)
    return ok({"person": person_json(request, merged), "merged": other})


async def split_person(request: web.Request) -> web.Response:
    """POST .../people/{person_id}/split {"face_ids": [...]}: those faces become a new person."""
    services = request.app[SERVICES]
    session_id = route_id(request, "session_id")
    person_id = route_id(request, "person_id")
    face_ids = (await _json_body(request)).get("face_ids")
    if not isinstance(face_ids, list) or not face_ids:
        raise BadRequest("face_ids must be a non-empty list of face ids")
    if len(face_ids) > services.settings.page_max_limit:
        raise BadRequest(f"at most {services.settings.page_max_limit} face_ids per split")
    kept, split_off = await people.split_person(
        services, session_id, person_id, [_an_id(f, "face_ids") for f in face_ids]
    )
    return ok({"person": person_json(request, kept), "new_person": person_json(request, split_off)}, status=201)
