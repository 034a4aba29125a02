"""API keys on the real service: the route table, 401/403, scopes, session-bound keys, bootstrap, CLI, keys API."""

from __future__ import annotations

import asyncio
import logging
import stat
from dataclasses import replace

import aiohttp
import pytest

from faceserve.app import create_app
from faceserve.cli import main as cli_main
from faceserve.core import api_keys
from faceserve.http import access, routes, routing
from faceserve.http.appkeys import SERVICES


@pytest.fixture
def public_images() -> bool:
    return False


@pytest.fixture
def pool(client):
    return client.server.app[SERVICES].pool


@pytest.fixture
def anon(client):
    """Requests without the test client's admin key: (method, path, headers=None, **kw) -> (status, headers, body)."""

    async def request(method: str, path: str, headers: dict | None = None, **kwargs):
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, client.make_url(path), headers=headers, **kwargs) as response,
        ):
            return response.status, response.headers, await response.read()

    return request


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _make_session(client, name: str) -> int:
    response = await client.post("/api/face/sessions", json={"name": name})
    assert response.status == 201
    return (await response.json())["data"]["id"]


async def _upload(client, session_id: int, name: str, data: bytes) -> dict:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
    body = await response.json()
    assert response.status == 201, body
    return body["data"]["images"][0]


def test_every_route_is_declared_once_with_its_access_and_budget(settings, engine):
    app = create_app(settings, engine)
    registered = {routing.route_key(route) for route in app.router.routes()}
    registered.discard(None)
    declared = {(r.method, r.path) for r in routes.ROUTES}
    assert registered == declared
    assert len(declared) == len(routes.ROUTES)
    with pytest.raises(ValueError):
        routing.Route("GET", "/x", routes.ROUTES[0].handler, "everyone", routing.READ, "x")
    with pytest.raises(ValueError):
        routing.Route("GET", "/x", routes.ROUTES[0].handler, routing.PUBLIC, "free", "x")


def _concrete(path: str) -> str:
    return (
        path.replace("{session_id}", "1")
        .replace("{image_id}", "1")
        .replace("{face_id}", "1")
        .replace("{person_id}", "1")
        .replace("{live_id}", "1")
        .replace("{prefix}", "fsk_abcdefgh")
        .replace("{name}", "IMG_0001.jpg")
    )


async def test_anonymous_requests_get_401_with_www_authenticate(client, anon):
    for route in routes.ROUTES:
        status, headers, body = await anon(route.method, _concrete(route.path))
        if route.access in api_keys.SCOPES or route.access == routing.LEGACY:
            assert status == 401, (route.method, route.path, status, body)
            assert headers["WWW-Authenticate"].startswith("Bearer")
            assert b'"unauthorized"' in body
    status, _, _ = await anon("GET", "/healthz")
    assert status == 200
    for bad in ("Bearer ", "Basic dXNlcjpwYXNz", "Bearer fsk_" + "A" * 43, "Bearer nonsense"):
        status, _, body = await anon("GET", "/api/face/sessions", {"Authorization": bad})
        assert status == 401 and b'"unauthorized"' in body, bad


async def test_scopes_x_api_key_revocation_and_expiry(client, anon, pool):
    search_key, _ = await api_keys.create(pool, ["search"])
    write_key, _ = await api_keys.create(pool, ["write"])
    status, _, _ = await anon("GET", "/api/face/sessions", {"X-API-Key": search_key})
    assert status == 200
    status, _, body = await anon("POST", "/api/face/sessions", _bearer(search_key), json={"name": "x"})
    assert status == 403 and b'"forbidden"' in body
    status, _, _ = await anon("POST", "/api/face/sessions", _bearer(write_key), json={"name": "x"})
    assert status == 201
    status, _, _ = await anon("GET", "/api/face/sessions", _bearer(write_key))
    assert status == 403  # write does not include search
    for method, path in (("GET", "/api/face/keys"), ("POST", "/api/face/keys")):
        status, _, _ = await anon(method, path, _bearer(write_key), json={})
        assert status == 403

    revoked, record = await api_keys.create(pool, ["search"])
    await api_keys.revoke(pool, record.prefix)
    expired, record = await api_keys.create(pool, ["search"])
    await pool.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE prefix = $1", record.prefix)
    for key in (revoked, expired, search_key[:-1] + ("A" if search_key[-1] != "A" else "B")):
        status, headers, _ = await anon("GET", "/api/face/sessions", _bearer(key))
        assert status == 401 and "WWW-Authenticate" in headers


async def test_last_use_is_written_in_batches(client, anon, pool):
    key, record = await api_keys.create(pool, ["search"])
    for _ in range(3):
        status, _, _ = await anon("GET", "/api/face/sessions", _bearer(key))
        assert status == 200
    # no write per request: nothing is recorded until the flush
    assert await pool.fetchval("SELECT last_used_at FROM api_keys WHERE prefix = $1", record.prefix) is None
    await client.server.app[access.ACCESS].keys.flush(pool)
    assert await pool.fetchval("SELECT last_used_at FROM api_keys WHERE prefix = $1", record.prefix) is not None


async def test_keys_api_create_list_revoke(client, anon):
    response = await client.post("/api/face/keys", json={"scopes": ["search"], "name": "guests", "expires_in": "30d"})
    assert response.status == 201
    created = (await response.json())["data"]
    key, prefix = created["key"], created["prefix"]
    assert key.startswith(prefix) and len(key) == 47 and created["expires_at"]
    status, _, _ = await anon("GET", "/api/face/sessions", _bearer(key))
    assert status == 200
    listing = (await (await client.get("/api/face/keys")).json())["data"]["keys"]
    listed = next(k for k in listing if k["prefix"] == prefix)
    assert listed["name"] == "guests" and listed["scopes"] == ["search"] and "key" not in listed
    assert key not in str(listing)
    response = await client.delete(f"/api/face/keys/{prefix}")
    assert response.status == 200 and (await response.json())["data"]["revoked_at"]
    status, _, _ = await anon("GET", "/api/face/sessions", _bearer(key))
    assert status == 401  # at once in this process
    assert (await client.delete("/api/face/keys/fsk_nothere")).status == 404
    for bad in ({"scopes": ["root"]}, {"scopes": "admin"}, {"sessions": ["7"]}, {"expires_in": "soon"}):
        response = await client.post("/api/face/keys", json=bad)
        assert response.status == 400, bad


async def test_bootstrap_admin_key_file(settings, engine, aiohttp_client, pool, caplog):
    key_file = settings.storage / "admin-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    record = await api_keys.find(pool, key)
    assert record is not None and record.scopes == ("admin",)
    # a second start finds a key and writes nothing; deleting the file revoked nothing
    key_file.unlink()
    with caplog.at_level(logging.INFO):
        await aiohttp_client(create_app(settings, engine))
    assert not key_file.exists()
    assert (await api_keys.find(pool, key)).live(record.created_at)


async def test_bootstrap_logs_the_path_never_the_key(settings, engine, aiohttp_client, caplog):
    with caplog.at_level(logging.DEBUG):
        await aiohttp_client(create_app(settings, engine))  # a fresh database: no key yet
    key_file = settings.storage / "admin-key"
    assert str(key_file) in caplog.text
    assert key_file.read_text().strip() not in caplog.text


async def test_cli_keys_while_the_server_runs(client, anon, settings, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    argv = ["keys", "create", "--storage", str(settings.storage), "--scope", "write", "--scope", "search",
            "--session", "5", "--expires-in", "2d", "--name", "photographer"]
    assert await asyncio.to_thread(cli_main, argv) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("fsk_")
    status, _, _ = await anon("GET", "/api/face/sessions", _bearer(key))
    assert status == 200
    assert await asyncio.to_thread(cli_main, ["keys", "list", "--storage", str(settings.storage)]) == 0
    listing = capsys.readouterr().out
    assert key[: api_keys.PREFIX_LENGTH] in listing and "photographer" in listing and key not in listing
    argv = ["keys", "revoke", key[: api_keys.PREFIX_LENGTH], "--storage", str(settings.storage)]
    assert await asyncio.to_thread(cli_main, argv) == 0
    client.server.app[access.ACCESS].keys.forget(key[: api_keys.PREFIX_LENGTH])  # as api_key_cache_s would
    status, _, _ = await anon("GET", "/api/face/sessions", _bearer(key))
    assert status == 401


async def test_auth_off_is_open_and_refuses_non_loopback(settings, engine, aiohttp_client, tmp_path):
    open_settings = replace(settings, auth=False, storage=tmp_path / "open")
    for host in ("127.0.0.1", "::1", "localhost"):
        access.refuse_open_network(replace(open_settings, host=host))
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        with pytest.raises(SystemExit):
            access.refuse_open_network(replace(open_settings, host=host))
    client = await aiohttp_client(create_app(open_settings, engine))
    async with (
        aiohttp.ClientSession() as session,
        session.post(client.make_url("/api/face/sessions"), json={"name": "laptop"}) as response,
    ):
        assert response.status == 201
    assert not (open_settings.storage / "admin-key").exists()


async def test_a_key_bound_to_one_session_touches_nothing_of_another(client, anon, pool, photos):
    mine = await _make_session(client, "mine")
    other = await _make_session(client, "other")
    players = photos["players"].read_bytes()
    image_mine = await _upload(client, mine, "players.jpg", players)
    image_other = await _upload(client, other, "players.jpg", players)
    # admin scope, so the session binding alone is what refuses
    key, _ = await api_keys.create(pool, ["admin"], session_ids=[mine])
    _, bound_elsewhere = await api_keys.create(pool, ["search"], session_ids=[other])
    auth = _bearer(key)

    def probe_form(session_id: int) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("session_id", str(session_id))
        form.add_field("image", photos["yaoming"].read_bytes(), filename="me.jpg", content_type="image/jpeg")
        return form

    def file_form() -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("file", photos["yaoming"].read_bytes(), filename="x.jpg", content_type="image/jpeg")
        return form

    name_other = image_other["identity"].split("/")[-1]
    refused = [
        ("GET", f"/api/face/sessions/{other}", {}),
        ("GET", f"/api/face/sessions/{other}/images", {}),
        ("POST", f"/api/face/sessions/{other}/images", {"data": file_form()}),
        ("DELETE", f"/api/face/image/{image_other['image_id']}", {}),
        ("GET", f"/api/face/resolve?path={image_other['identity']}", {}),
        # whether a file exists in another session is no guest's to learn: 403 whether or not it does
        ("GET", f"/api/face/resolve?path={other}/db/no-such-photo.jpg", {}),
        ("GET", f"/api/face/resolve?path=000{other}/db/no-such-photo.jpg", {}),
        ("GET", f"/storage/face_sessions/{other}/db/{name_other}", {"allow_redirects": False}),
        ("POST", "/api/face/search", {"data": probe_form(other)}),
        ("POST", f"/api/face/sessions/{other}/search", {"data": probe_form(other)}),
        ("GET", f"/api/face/sessions/{other}/people", {}),
        ("GET", f"/api/face/sessions/{other}/people/1/images", {}),
        ("POST", f"/api/face/sessions/{other}/forget", {"data": probe_form(other)}),
        ("POST", "/api/face/sessions", {"json": {"name": "new"}}),
        ("POST", "/api/face/keys", {"json": {"scopes": ["search"], "sessions": [other]}}),
        ("POST", "/api/face/keys", {"json": {"scopes": ["search"]}}),  # unbound: would see more than its maker
        ("DELETE", f"/api/face/keys/{bound_elsewhere.prefix}", {}),
        ("DELETE", f"/api/face/sessions/{other}", {}),
    ]
    for method, path, kwargs in refused:
        status, _, body = await anon(method, path, auth, **kwargs)
        assert status == 403 and b'"forbidden"' in body, (method, path, status, body)

    # the same requests for its own session work
    name_mine = image_mine["identity"].split("/")[-1]
    allowed = [
        ("GET", f"/api/face/sessions/{mine}", {}, 200),
        ("GET", f"/api/face/sessions/{mine}/images", {}, 200),
        ("GET", f"/api/face/resolve?path={image_mine['identity']}", {}, 200),
        ("GET", f"/storage/face_sessions/{mine}/db/{name_mine}", {"allow_redirects": False}, 301),
        ("POST", "/api/face/search", {"data": probe_form(mine)}, 200),
        ("POST", f"/api/face/sessions/{mine}/search", {"data": probe_form(mine)}, 200),
        ("GET", f"/api/face/sessions/{mine}/people", {}, 200),
        ("POST", f"/api/face/sessions/{mine}/forget", {"data": probe_form(mine)}, 200),
        ("POST", "/api/face/keys", {"json": {"scopes": ["search"], "sessions": [mine]}}, 201),
        ("POST", f"/api/face/sessions/{mine}/images", {"data": file_form()}, 201),
        ("DELETE", f"/api/face/image/{image_mine['image_id']}", {}, 200),
    ]
    for method, path, kwargs, expected in allowed:
        status, _, body = await anon(method, path, auth, **kwargs)
        assert status == expected, (method, path, status, body)
    status, _, body = await anon("GET", "/api/face/sessions", auth)
    import json

    assert [s["id"] for s in json.loads(body)["data"]["sessions"]] == [mine]
    status, _, body = await anon("GET", "/api/face/keys", auth)
    listed = json.loads(body)["data"]["keys"]
    assert listed and all(k["sessions"] == [mine] for k in listed)
    # the other session is untouched
    response = await client.get(f"/api/face/sessions/{other}")
    assert (await response.json())["data"]["image_count"] == 1
