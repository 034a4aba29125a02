"""Live results from a search's live_token: the searched face sealed in the answer (AES-256-GCM under a key
derived from the service's signing keys, core/live_tokens.py), handed back as probe_token so a live search
starts with no selfie sent again and no model run; tokens of another session, altered, expired, of another
embedding size or of a retired key are refused with their own codes; the token does not hold the embedding
in the clear."""

from __future__ import annotations

import base64
import dataclasses
import struct
import time

import aiohttp
import numpy as np
import pytest
from helpers import create_session, search, upload
from sse import open_stream

from faceserve.config import Settings
from faceserve.core import api_keys, live_tokens, signing_store
from faceserve.http import access

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # one search in flight at most: a test holds that slot to show the token path never takes it
    return dataclasses.replace(settings, live_heartbeat_s=0.3, max_pending_searches=1)


async def _live(client, session_id: int, headers: dict | None = None, **parts: bytes | str) -> tuple[int, dict]:
    form = aiohttp.FormData(default_to_multipart=True)  # as a browser's FormData, even without a file
    for name, value in parts.items():
        if isinstance(value, bytes):
            form.add_field(name, value, filename="selfie.jpg", content_type="image/jpeg")
        else:
            form.add_field(name, value)
    response = await client.post(f"/api/face/sessions/{session_id}/live", data=form, headers=headers or {})
    return response.status, await response.json()


async def _token(client, session_id: int, probe: bytes, **fields: str) -> dict:
    status, body = await search(client, session_id, probe, **fields)
    assert status == 200, body
    return body["data"]


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _header(token: str) -> tuple[str, int, int]:
    """(key id, session id, expires) as the token's authenticated header spells them."""
    raw = _raw(token)
    kid_end = 2 + raw[1]
    session_id, expires = struct.unpack(">QQ", raw[kid_end : kid_end + 16])
    return raw[2:kid_end].decode(), session_id, expires


async def test_a_search_token_starts_a_live_search_without_inference_and_its_stream_gets_new_photos(
    client, photos, services
):
    session_id = await create_session(client)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    # the session route answers it too
    response = await client.post(
        f"/api/face/sessions/{session_id}/search", data={"image": photos["yaoming"].read_bytes()}
    )
    answer = (await response.json())["data"]
    token = answer["live_token"]
    assert isinstance(token, str) and answer["matches"] == []
    kid, sealed_session, expires = _header(token)
    assert sealed_session == session_id and kid == client.server.app[access.ACCESS].signing.keys[0][0]
    assert abs(expires - (time.time() + 60 * services.settings.live_token_minutes)) < 10
    # nothing of the search was kept
    assert await services.pool.fetchval("SELECT count(*) FROM live_searches") == 0

    runs = services.models.recogniser.runs
    gate = services.admission.searches
    with gate.admit():  # every search slot taken: a selfie would be refused busy, a token is not
        assert gate.in_flight == gate.limit
        status, body = await _live(client, session_id, image=photos["yaoming"].read_bytes())
        assert status == 503 and body["error"]["code"] == "busy"
        status, body = await _live(client, session_id, probe_token=token)
    assert status == 201, body
    assert services.models.recogniser.runs == runs  # no face embedded
    live_id = body["data"]["live_id"]
    assert body["data"]["matches"] == []

    events = str(client.make_url(f"/api/face/sessions/{session_id}/live/{live_id}/events"))
    admin = {"Authorization": client.session.headers["Authorization"]}
    async with aiohttp.ClientSession() as http:
        stream = await open_stream(http, events, admin)
        players = (await upload(client, session_id, ("players.jpg", photos["players"].read_bytes())))[0]
        event = await stream.next_match()
        assert event.event == "match" and event.data["image_id"] == players["image_id"]
        assert event.data["distance"] < 0.6
    # the same token, while it lasts, starts another (the guest turned live results off and on again)
    status, body = await _live(client, session_id, probe_token=token)
    assert status == 201
    assert [m["image_id"] for m in body["data"]["matches"]] == [players["image_id"]]


async def test_the_picked_face_is_the_one_made_live(client, photos):
    session_id = await create_session(client)
    group = await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    assert group[0]["faces"] >= 3
    largest = await _token(client, session_id, photos["t1"].read_bytes())
    picked = await _token(client, session_id, photos["t1"].read_bytes(), face="1")
    assert picked["used"] == [1] and picked["probe_face"]["index"] == 1
    assert picked["matches"][0]["face_id"] != largest["matches"][0]["face_id"]
    for answer in (largest, picked):
        status, body = await _live(client, session_id, probe_token=answer["live_token"])
        assert status == 201, body
        # the live search matches that face in the photo, as its search did
        assert body["data"]["matches"][0]["face_id"] == answer["matches"][0]["face_id"]
    together = await _token(client, session_id, photos["yaoming"].read_bytes(), match="all")
    assert together["live_token"] is None  # live results follow one face: match=all has none


async def test_the_token_does_not_hold_the_embedding_in_the_clear(client, photos, services):
    session_id = await create_session(client)
    first = (await _token(client, session_id, photos["yaoming"].read_bytes()))["live_token"]
    second = (await _token(client, session_id, photos["yaoming"].read_bytes()))["live_token"]
    assert first != second  # a fresh nonce each time: equal faces do not give equal tokens
    status, body = await _live(client, session_id, probe_token=first)
    assert status == 201
    kept = await services.pool.fetchval("SELECT embedding FROM live_searches WHERE id = $1", body["data"]["live_id"])
    embedding = np.frombuffer(kept, dtype="<f4")
    assert embedding.shape == (services.models.engine.embedding_dim,)
    assert abs(float(np.linalg.norm(embedding)) - 1) < 1e-3  # the face's, as search embedded it
    status, body = await _live(client, session_id, image=photos["yaoming"].read_bytes())
    by_selfie = await services.pool.fetchval("SELECT embedding FROM live_searches WHERE id = $1", body["data"]["live_id"])
    assert float(np.dot(embedding, np.frombuffer(by_selfie, dtype="<f4"))) > 0.999
    for token in (first, second):
        raw = _raw(token)
        # no run of 4 of its values (16 bytes) appears in the token, nor any whole value of the first 32
        assert not any(kept[i : i + 16] in raw for i in range(0, len(kept) - 15, 4))
        assert sum(kept[i : i + 4] in raw for i in range(0, 128, 4)) < 4


async def test_tokens_of_another_session_altered_expired_or_of_other_models_are_refused(client, photos, services):
    mine = await create_session(client, "mine")
    theirs = await create_session(client, "theirs")
    token = (await _token(client, mine, photos["yaoming"].read_bytes()))["live_token"]
    their_token = (await _token(client, theirs, photos["yaoming"].read_bytes()))["live_token"]

    status, body = await _live(client, mine, probe_token=their_token)
    assert (status, body["error"]["code"]) == (403, "live_token_other_session")

    raw = bytearray(_raw(token))
    for place in (len(raw) // 2, len(raw) - 1, 3):  # the sealed embedding, the tag, the key id
        altered = raw.copy()
        altered[place] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
        status, body = await _live(client, mine, probe_token=forged)
        assert (status, body["error"]["code"]) == (400, "live_token_invalid"), place
    # the header is authenticated too: the session rewritten to another one does not open
    kid_end = 2 + raw[1]
    moved = raw[:kid_end] + struct.pack(">Q", theirs) + raw[kid_end + 8 :]
    forged = base64.urlsafe_b64encode(bytes(moved)).rstrip(b"=").decode()
    status, body = await _live(client, theirs, probe_token=forged)
    assert (status, body["error"]["code"]) == (400, "live_token_invalid")
    for junk in ("", "not a token", token + "=", token[:40], "A" * (live_tokens.MAX_CHARS + 1)):
        status, body = await _live(client, mine, probe_token=junk)
        assert status in (400, 413) and body["error"]["code"] in ("live_token_invalid", "payload_too_large"), junk

    # sealed by the service's own keys as a search long ago would have (time injected, no sleeping)
    keys = client.server.app[access.ACCESS].signing
    dim = services.models.engine.embedding_dim
    models = services.settings.model_pack
    embedding = live_tokens.unseal(keys, token, mine, dim, time.time(), models)
    old = live_tokens.seal(keys, mine, embedding, int(time.time()) - 1, models)
    status, body = await _live(client, mine, probe_token=old)
    assert (status, body["error"]["code"]) == (410, "live_token_expired")
    with pytest.raises(live_tokens.LiveTokenExpired):
        live_tokens.unseal(
            keys, token, mine, dim, time.time() + 60 * services.settings.live_token_minutes + 1, models
        )
    # another embedding size
    other_size = live_tokens.seal(keys, mine, embedding[: dim // 2] * np.sqrt(2), int(time.time()) + 60, models)
    status, body = await _live(client, mine, probe_token=other_size)
    assert (status, body["error"]["code"]) == (409, "live_token_other_model")
    # another model pack of the same size: its embeddings mean something else, it does not open
    other_pack = live_tokens.seal(keys, mine, embedding, int(time.time()) + 60, "buffalo_l")
    status, body = await _live(client, mine, probe_token=other_pack)
    assert (status, body["error"]["code"]) == (400, "live_token_invalid")

    # exactly one of image and probe_token
    status, body = await _live(client, mine, probe_token=token, image=photos["yaoming"].read_bytes())
    assert (status, body["error"]["code"]) == (400, "bad_request")
    status, body = await _live(client, mine, limit="5")
    assert (status, body["error"]["code"]) == (400, "bad_request")
    assert await services.pool.fetchval("SELECT count(*) FROM live_searches") == 0
    status, body = await _live(client, mine, probe_token=token)
    assert status == 201, body


async def test_a_retired_signing_key_ends_its_tokens_and_a_rotated_one_seals(client, photos, services):
    session_id = await create_session(client)
    token = (await _token(client, session_id, photos["yaoming"].read_bytes()))["live_token"]
    old_kid = _header(token)[0]
    new_kid = await signing_store.rotate(services.pool)
    await services.pool.execute("UPDATE url_signing_keys SET created_at = now() - interval '1 hour' WHERE kid = $1", new_kid)
    await access._load_signing_keys(client.server.app)  # what the refresh task does
    fresh = (await _token(client, session_id, photos["yaoming"].read_bytes()))["live_token"]
    assert _header(fresh)[0] == new_kid
    assert (await _live(client, session_id, probe_token=token))[0] == 201  # the old key still opens its own
    assert await signing_store.retire(services.pool, old_kid)
    await access._load_signing_keys(client.server.app)
    status, body = await _live(client, session_id, probe_token=token)
    assert (status, body["error"]["code"]) == (400, "live_token_invalid")
    assert (await _live(client, session_id, probe_token=fresh))[0] == 201


async def test_guest_keys_use_tokens_in_their_own_session_only(client, photos, services):
    mine = await create_session(client, "mine")
    theirs = await create_session(client, "theirs")
    guest, _ = await api_keys.create(services.pool, ["search"], session_ids=[mine])
    as_guest = {"Authorization": f"Bearer {guest}"}
    token = (await _token(client, mine, photos["yaoming"].read_bytes()))["live_token"]
    their_token = (await _token(client, theirs, photos["yaoming"].read_bytes()))["live_token"]
    status, body = await _live(client, theirs, as_guest, probe_token=their_token)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await _live(client, mine, as_guest, probe_token=their_token)
    assert (status, body["error"]["code"]) == (403, "live_token_other_session")
    status, body = await _live(client, mine, as_guest, probe_token=token)
    assert status == 201, body
