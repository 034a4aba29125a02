"""The committed OpenAPI document against the real app: every route is in it, it is served as committed,
and a Schemathesis run of the whole API finds no 5xx and no answer that breaks it.

Every other test's answers are checked against the document too (tests/contract.py, through the `client`
fixture). The fuzz run is bounded for CI; FACESERVE_FUZZ_EXAMPLES=1000 (say) runs more cases per operation.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import asyncpg
import pytest
import schemathesis
from aiohttp import web
from contract import check_answer
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.http import routes
from faceserve.http.docs import document

_FUZZ_EXAMPLES = int(os.environ.get("FACESERVE_FUZZ_EXAMPLES", "15"))
# aiohttp answers HEAD for every GET route by itself; HEAD is documented where clients use it (images)
_IMPLIED_HEAD = "HEAD"


def _documented() -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document()["paths"].items()
        for method in item
        if method in ("get", "head", "post", "put", "patch", "delete")
    }


def test_every_route_is_in_the_document(settings: Settings) -> None:
    app = create_app(settings)
    documented = _documented()
    missing = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if isinstance(route.resource, web.StaticResource):
            path += "/{filename}"  # a folder of files: documented as one templated path
        if route.method == _IMPLIED_HEAD and ("GET", path) in documented:
            continue
        if (route.method, path) not in documented:
            missing.append(f"{route.method} {path}")
    assert not missing, f"routes missing from src/faceserve/openapi.json: {missing}"
    assert len(documented) >= 16


def test_each_declared_route_is_its_operation_in_the_document() -> None:
    operations = {
        (method.upper(), path): item[method].get("operationId")
        for path, item in document()["paths"].items()
        for method in item
        if method in ("get", "head", "post", "put", "patch", "delete")
    }
    declared = {(r.method, r.path): r.operation for r in routes.ROUTES}
    declared |= {("HEAD", r.path): r.head_operation for r in routes.ROUTES if r.head_operation}
    assert declared == operations


def test_the_document_is_valid_openapi_3_1() -> None:
    from openapi_spec_validator import validate

    spec = document()
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises on an invalid document


async def test_served_document_is_the_committed_one_and_docs_render_it(client) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    committed = json.loads((Path(__file__).parents[1] / "src/faceserve/openapi.json").read_text())
    assert await response.json() == committed
    page = await client.get("/docs")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert 'fetch("openapi.json")' in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    policy = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert "'unsafe-inline'" not in policy and policy.count("'sha256-") == 2  # its one script, its one style
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_docs_render_under_their_content_security_policy(client, browser) -> None:
    """The hashes let the page's own script and style run: the operations appear and nothing is refused."""
    from chromium import DESKTOP, open_page

    page, problems = await open_page(browser, str(client.make_url("/docs")), DESKTOP)
    await page.wait_for_selector("#operations details", timeout=30_000)
    assert await page.locator("#operations details").count() >= 10
    # the style applied too (a refused <style> leaves details without their border)
    border = await page.locator("#operations details").first.evaluate("e => getComputedStyle(e).borderTopStyle")
    assert border == "solid"
    assert problems.seen == [], problems.seen


def test_an_answer_that_breaks_the_document_fails() -> None:
    body = json.dumps({"success": True, "data": {"id": "not a number", "name": "x"}}).encode()
    with pytest.raises(AssertionError, match="breaks openapi.json"):
        check_answer("POST", "/api/face/sessions", {}, 201, {"Content-Type": "application/json"}, body)
    with pytest.raises(AssertionError, match="breaks openapi.json"):  # a status the document does not list
        check_answer("GET", "/api/face/sessions", {}, 418, {"Content-Type": "application/json"}, b"{}")
    good = json.dumps({"success": True, "data": {"id": 1, "name": "x", "created_at": "2026-01-01T00:00:00+00:00"}})
    check_answer("POST", "/api/face/sessions", {}, 201, {"Content-Type": "application/json"}, good.encode())


# ---------------------------------------------------------------- Schemathesis against a live server


class _LiveServer:
    """The real app on a loopback port, in a thread with its own event loop, with one session and photo."""

    def __init__(self, settings: Settings, engine, photo: Path) -> None:
        self._settings, self._engine, self._photo = settings, engine, photo
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.base_url = ""
        # the bootstrap admin key, written by the app's first start: every fuzzed request carries it
        self.headers: dict[str, str] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(300)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)  # type: ignore[union-attr]
        self._thread.join(60)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        runner = web.AppRunner(create_app(self._settings, self._engine))
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.base_url = f"http://127.0.0.1:{port}"
            await self._seed()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._error = exc
            self._ready.set()
            await runner.cleanup()
            return
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _seed(self) -> None:
        import aiohttp

        key = (self._settings.storage / "admin-key").read_text().strip()
        self.headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(self.base_url, headers=self.headers) as http:
            await http.post("/api/face/sessions", json={"name": "fuzz"})
            form = aiohttp.FormData()
            form.add_field("file", self._photo.read_bytes(), filename="players.jpg")
            async with http.post("/api/face/sessions/1/images", data=form) as response:
                assert response.status == 201, await response.text()


@pytest.fixture(scope="module")
def live_server(postgres_uri: str, engine, photos, models_dir: Path, tmp_path_factory) -> Iterator[_LiveServer]:
    name = "faceserve_fuzz_" + secrets.token_hex(4)

    async def database(sql: str) -> None:
        admin = await asyncpg.connect(postgres_uri)
        try:
            await admin.execute(sql)
        finally:
            await admin.close()

    asyncio.run(database(f'CREATE DATABASE "{name}"'))
    from urllib.parse import urlsplit, urlunsplit

    url = urlunsplit(urlsplit(postgres_uri)._replace(path="/" + name))
    storage = tmp_path_factory.mktemp("fuzz") / "storage"
    options = Settings(
        storage=storage,
        database_url=url,
        models_dir=models_dir,
        max_upload_bytes=4 * 1024 * 1024,
        max_image_pixels=20_000_000,
    )
    with _LiveServer(options, engine, photos["players"]) as server:
        yield server
    asyncio.run(database(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


schema = schemathesis.openapi.from_dict(document())
_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=_FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_the_document(case, live_server: _LiveServer) -> None:
    case.call_and_validate(base_url=live_server.base_url, headers=live_server.headers, checks=_CHECKS, timeout=60)
