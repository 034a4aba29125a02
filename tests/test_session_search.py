"""POST /api/face/sessions/{id}/search: the search with its session in the path (so a balancer can route by
it) answers as POST /api/face/search does; a form session_id that disagrees with the path is refused."""

from __future__ import annotations

import aiohttp
from aiohttp.test_utils import TestClient
from helpers import create_session, search, upload


async def _search_by_path(client: TestClient, path_id: str, probe: bytes, **fields: str) -> tuple[int, dict]:
    form = aiohttp.FormData()
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("image", probe, filename="probe.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{path_id}/search", data=form)
    return response.status, await response.json()


async def test_the_session_route_finds_what_the_old_route_finds(client, photos):
    session_id = await create_session(client)
    other_id = await create_session(client, "other")
    [players] = await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    await upload(client, other_id, ("t1.jpg", photos["t1"].read_bytes()))
    probe = photos["yaoming"].read_bytes()

    old_status, old = await search(client, session_id, probe)
    status, new = await _search_by_path(client, str(session_id), probe)
    assert (old_status, status) == (200, 200)
    assert [m["image_id"] for m in new["data"]["matches"]] == [players["image_id"]]
    assert new["data"]["matches"] == old["data"]["matches"]
    # the path picks the session: the other one holds no Yao Ming
    status, body = await _search_by_path(client, str(other_id), probe)
    assert status == 200 and body["data"]["matches"] == []
    # a form field that agrees is fine, and the optional fields still apply
    status, body = await _search_by_path(
        client, str(session_id), probe, session_id=str(session_id), limit="1"
    )
    assert status == 200 and len(body["data"]["matches"]) == 1


async def test_a_form_session_id_that_disagrees_with_the_path_is_400(client, photos):
    session_id = await create_session(client)
    other_id = await create_session(client, "other")
    probe = photos["yaoming"].read_bytes()
    status, body = await _search_by_path(client, str(session_id), probe, session_id=str(other_id))
    assert status == 400
    assert body["error"]["code"] == "bad_request"
    assert str(other_id) in body["error"]["message"] and str(session_id) in body["error"]["message"]


async def test_unknown_or_non_numeric_session_in_the_path_is_404(client, photos):
    probe = photos["yaoming"].read_bytes()
    for path_id in ("987654", "abc", "-1"):
        status, body = await _search_by_path(client, path_id, probe)
        assert status == 404, path_id
        assert body["error"]["code"] == "session_not_found"


async def test_the_session_route_still_wants_an_image(client):
    session_id = await create_session(client)
    form = aiohttp.FormData()
    form.add_field("threshold", "0.5")
    form.add_field("note", b"not a probe", filename="note.txt")  # a file part makes the body multipart
    response = await client.post(f"/api/face/sessions/{session_id}/search", data=form)
    assert response.status == 400
    assert "image" in (await response.json())["error"]["message"]
