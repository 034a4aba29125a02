"""A full storage disk: uploads answer 507 `insufficient_storage` and store nothing, resized copies and face
crops are still served (without being kept), /healthz and `faceserve doctor` say the disk is low.

The disk is a real one: storage sits on a 16 MiB tmpfs filled to the last byte, so every write meets the
kernel's own ENOSPC. Mounting needs root (CI runs as root); elsewhere the module is skipped, saying why.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from fuzz_support import stored_state
from helpers import create_session, upload
from PIL import Image

from faceserve.cli.doctor import FAIL, check_disk
from faceserve.config import Settings


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "storage"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"a tmpfs cannot be mounted here (root and CAP_SYS_ADMIN needed): {exc}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


@pytest.fixture
def settings(settings: Settings, small_disk: Path) -> Settings:
    return replace(settings, storage=small_disk, storage_min_free_bytes=1024 * 1024)


def _fill(folder: Path) -> Path:
    """Write until the disk refuses: every free block taken."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    # the last partial block too, a byte at a time
    with open(filler, "ab", buffering=0) as out:
        try:
            while True:
                out.write(b"\0")
        except OSError:
            pass
    return filler


def _derived_files(storage: Path) -> list[Path]:
    return [p for p in storage.rglob("*") if p.is_file() and "derived" in p.parts]


async def test_a_full_disk_refuses_uploads_with_507_and_still_serves_renditions(client, services, settings, photos):
    session_id = await create_session(client)
    (image,) = await upload(client, session_id, ("yao.jpg", photos["yaoming"].read_bytes()))
    face_id = await services.pool.fetchval("SELECT min(id) FROM faces WHERE image_id = $1", image["image_id"])
    health = await (await client.get("/healthz")).json()
    assert health["data"]["disk"] == "ok"

    filler = _fill(settings.storage)
    try:
        health = await (await client.get("/healthz")).json()
        assert health["data"]["disk"] == "low"
        assert health["data"]["disk_free_bytes"] < settings.storage_min_free_bytes
        disk = check_disk(settings)
        assert disk[0].status == FAIL and "STORAGE_MIN_FREE_BYTES" in disk[0].detail

        before = await stored_state(services, settings.storage)
        form = aiohttp.FormData()
        form.add_field("file", photos["t1"].read_bytes(), filename="t1.jpg", content_type="image/jpeg")
        response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
        assert response.status == 507, await response.text()
        assert (await response.json())["error"]["code"] == "insufficient_storage"
        assert response.headers["Retry-After"] == str(settings.storage_full_retry_after_s)
        assert await stored_state(services, settings.storage) == before  # no row, no file, no .part left

        # a cache that cannot be written is no reason to refuse the picture
        for path, width in ((f"/api/face/image/{image['image_id']}?w=64", 64), (f"/api/face/face/{face_id}?w=64", None)):
            response = await client.get(path)
            assert response.status == 200, await response.text()
            with Image.open(io.BytesIO(await response.read())) as rendered:
                assert rendered.format == "JPEG"
                assert width is None or rendered.width == width
        assert _derived_files(settings.storage) == []  # not kept, temporary files included
    finally:
        filler.unlink()

    # with space again, renditions are kept as before
    response = await client.get(f"/api/face/image/{image['image_id']}?w=64")
    assert response.status == 200
    assert len(_derived_files(settings.storage)) == 1
