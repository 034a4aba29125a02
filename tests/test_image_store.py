"""Image bytes kept in Postgres (FACESERVE_IMAGE_STORE=postgres) instead of files: where bytes go, what
deletes take with them, failures at commit, derivatives, and switching the setting on a live database.

The serving contract itself (ETag, ranges, 304/412/416, large bodies) runs against both stores in
test_serving.py and test_serving_bodies.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
from dataclasses import replace

import aiohttp
import pytest
from helpers import IMAGE_STORES, copy_photo, create_session, derived_of, files_under, search, upload
from PIL import Image

from faceserve.app import create_app
from faceserve.config import Settings, SettingsError, load_settings
from faceserve.core.importer import import_tree
from faceserve.core.services import open_services
from faceserve.errors import ImageNotFound
from faceserve.http import downloads
from faceserve.http.appkeys import SERVICES
from faceserve.http.serving import served_file
from faceserve.layout import SessionLayout
from faceserve.media import renditions


async def _blob(services, image_id: int) -> bytes | None:
    return await services.pool.fetchval("SELECT data FROM image_blobs WHERE image_id = $1", image_id)


async def _bytes_in(services, image_id: int) -> str:
    return await services.pool.fetchval("SELECT bytes_in FROM face_session_images WHERE id = $1", image_id)


def _originals_on_disk(settings: Settings) -> list[str]:
    """Committed originals and leftover .part files: everything under face_sessions/*/db/."""
    return [p for p in files_under(SessionLayout(settings.storage).sessions_root) if p.split("/")[1] == "db"]


@pytest.mark.parametrize("image_store", ["postgres"])
async def test_postgres_store_keeps_bytes_in_the_database_and_none_on_disk(client, services, settings, photos):
    data = photos["t1"].read_bytes()
    session_id = await create_session(client)
    [image] = await upload(client, session_id, ("t1.jpg", data))
    assert image["faces"] == 6 and image["identity"].startswith(f"{session_id}/db/")
    assert await _bytes_in(services, image["image_id"]) == "postgres"
    assert await _blob(services, image["image_id"]) == data
    assert _originals_on_disk(settings) == []  # the .part file is gone too

    response = await client.get(f"/api/face/image/{image['image_id']}")
    assert response.status == 200 and await response.read() == data
    status, body = await search(client, session_id, data)
    assert status == 200 and body["data"]["matches"][0]["image_id"] == image["image_id"]


@pytest.mark.parametrize("image_store", IMAGE_STORES)
async def test_the_same_bytes_get_the_same_etag_in_either_store(client, photos):
    """The validator comes from the content, not from where it is kept: caches keep working after a switch."""
    data = photos["gdp"].read_bytes()
    [image] = await upload(client, await create_session(client), ("gdp.jpg", data))
    response = await client.get(f"/api/face/image/{image['image_id']}")
    assert response.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()[:32]}"'


@pytest.mark.parametrize("image_store", ["postgres"])
async def test_deleting_an_image_or_a_session_deletes_its_bytes(client, services, photos):
    session_id = await create_session(client)
    first, second = await upload(
        client, session_id, ("t1.jpg", photos["t1"].read_bytes()), ("gdp.jpg", photos["gdp"].read_bytes())
    )
    assert (await client.delete(f"/api/face/image/{first['image_id']}")).status == 200
    assert await _blob(services, first["image_id"]) is None
    assert (await client.get(f"/api/face/image/{first['image_id']}")).status == 404
    assert await _blob(services, second["image_id"]) is not None

    assert (await client.delete(f"/api/face/sessions/{session_id}")).status == 200
    assert await services.pool.fetchval("SELECT count(*) FROM image_blobs") == 0


@pytest.mark.parametrize("image_store", IMAGE_STORES)
async def test_a_failure_at_commit_keeps_neither_row_nor_bytes(client, services, settings, photos):
    """A deferred constraint trigger fails the COMMIT itself: after the file was renamed into place (file
    store) or the bytes inserted (Postgres store). Nothing of the image may remain."""
    session_id = await create_session(client)
    async with services.pool.acquire() as conn:
        await conn.execute(
            "CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'disk full at commit (simulated)'; END $$"
        )
        await conn.execute(
            "CREATE CONSTRAINT TRIGGER fail_images AFTER INSERT ON face_session_images "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_at_commit()"
        )
    form_data = photos["t1"].read_bytes()
    form = aiohttp.FormData()
    form.add_field("file", form_data, filename="t1.jpg", content_type="image/jpeg")
    response = await client.post(f"/api/face/sessions/{session_id}/images", data=form)
    assert response.status == 500
    assert await services.pool.fetchval("SELECT count(*) FROM face_session_images") == 0
    assert await services.pool.fetchval("SELECT count(*) FROM faces") == 0
    assert await services.pool.fetchval("SELECT count(*) FROM image_blobs") == 0
    assert _originals_on_disk(settings) == []
    status, body = await search(client, session_id, form_data)
    assert status == 200 and body["data"]["matches"] == []

    await services.pool.execute("DROP TRIGGER fail_images ON face_session_images")
    [image] = await upload(client, session_id, ("t1.jpg", form_data))
    assert image["faces"] == 6


@pytest.mark.parametrize("image_store", ["postgres"])
async def test_derivatives_and_face_crops_render_from_bytes_in_postgres(client, services, settings, photos):
    session_id = await create_session(client)
    [image] = await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    response = await client.get(f"/api/face/image/{image['image_id']}", params={"w": "320"})
    assert response.status == 200, await response.text()
    thumbnail = Image.open(io.BytesIO(await response.read()))
    assert thumbnail.width == 320 and response.headers["Vary"] == "Accept"

    face_id = await services.pool.fetchval("SELECT min(id) FROM faces WHERE image_id = $1", image["image_id"])
    crop = await client.get(f"/api/face/face/{face_id}")
    assert crop.status == 200 and crop.headers["Content-Type"] == "image/jpeg"
    # renders are a cache on disk in both stores; originals are not
    assert _originals_on_disk(settings) == []
    assert len(files_under(SessionLayout(settings.storage).sessions_root / str(session_id) / "derived")) == 2

    await services.pool.execute("DELETE FROM image_blobs WHERE image_id = $1", image["image_id"])
    response = await client.get(f"/api/face/image/{image['image_id']}", params={"w": "640"})
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "image_not_found"


async def test_switching_the_setting_strands_no_image(settings, engine, photos, aiohttp_client):
    """Images keep being served from where they were put: the row says which store holds them."""
    on_disk = await aiohttp_client(create_app(replace(settings, image_store="file"), engine))
    session_id = await create_session(on_disk)
    [old] = await upload(on_disk, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    await on_disk.close()

    in_postgres = await aiohttp_client(create_app(replace(settings, image_store="postgres"), engine))
    [new] = await upload(in_postgres, session_id, ("gdp.jpg", photos["gdp"].read_bytes()))
    for image, name in ((old, "t1"), (new, "gdp")):
        response = await in_postgres.get(f"/api/face/image/{image['image_id']}")
        assert response.status == 200 and await response.read() == photos[name].read_bytes()
    assert _originals_on_disk(settings) == [f"{session_id}/db/{old['identity'].split('/')[-1]}"]

    # deleting each one cleans the store it lives in
    for image in (old, new):
        assert (await in_postgres.delete(f"/api/face/image/{image['image_id']}")).status == 200
    assert _originals_on_disk(settings) == []
    assert await in_postgres.server.app[SERVICES].pool.fetchval("SELECT count(*) FROM image_blobs") == 0


def test_an_unknown_store_is_refused_when_settings_are_read(settings):
    with pytest.raises(SettingsError, match="FACESERVE_IMAGE_STORE must be one of file, postgres, s3"):
        replace(settings, image_store="ftp")
    with pytest.raises(SettingsError, match="FACESERVE_IMAGE_STORE"):
        load_settings(env={"FACESERVE_IMAGE_STORE": "ftp"})
    with pytest.raises(SettingsError, match="FACESERVE_IMAGE_STORE=s3 needs FACESERVE_S3_BUCKET"):
        load_settings(env={"FACESERVE_IMAGE_STORE": "s3"})


@pytest.mark.parametrize("image_store", IMAGE_STORES)
async def test_an_image_deleted_by_another_process_stops_its_derivatives(settings, engine, photos, aiohttp_client):
    """Two processes on one database and storage (--workers 2): the one that did not delete still holds the
    image's serving metadata, but finds neither a rendered file nor the original's bytes: 404, not a render."""
    first = await aiohttp_client(create_app(settings, engine))
    second = await aiohttp_client(create_app(settings, engine, sweep_partial_uploads=False))
    [image] = await upload(first, await create_session(first), ("t1.jpg", photos["t1"].read_bytes()))
    thumbnail = f"/api/face/image/{image['image_id']}?w=320"
    assert (await second.get(thumbnail)).status == 200  # second caches the image's metadata

    assert (await first.delete(f"/api/face/image/{image['image_id']}")).status == 200
    response = await second.get(thumbnail)
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "image_not_found"
    assert (await second.get(f"/api/face/image/{image['image_id']}?w=640")).status == 404
    assert await derived_of(second.server.app[SERVICES], int(image["identity"].split("/")[0])) == []


@pytest.mark.parametrize("image_store", ["postgres"])
async def test_import_of_an_old_tree_into_postgres_keeps_names_and_old_urls(
    tmp_path, settings, engine, photos, aiohttp_client
):
    old = tmp_path / "old" / "face_sessions" / "5" / "db"
    copy_photo(photos["t1"], old / "party_001.jpg")
    copy_photo(photos["t1"], old / "copy_of_001.jpg")  # same bytes: an alias, no second blob
    async with open_services(settings, engine) as services:
        report = await import_tree(services, tmp_path / "old")
        assert (report.images_created, report.duplicates) == (1, 1)
        assert await services.pool.fetchval("SELECT count(*) FROM image_blobs") == 1
    assert _originals_on_disk(settings) == []
    client = await aiohttp_client(create_app(settings, engine))
    for name in ("party_001.jpg", "copy_of_001.jpg"):
        response = await client.get(f"/storage/face_sessions/5/db/{name}")  # follows the 301
        assert response.status == 200 and await response.read() == photos["t1"].read_bytes()


@pytest.mark.parametrize("image_store", IMAGE_STORES)
async def test_a_render_that_outlives_its_image_leaves_no_derivative(client, services, settings, photos):
    """The image is deleted while its thumbnail is being rendered (after its derivatives were removed): the
    finished render must not stay behind under the derived/ folder, and the request is a 404."""
    session_id = await create_session(client)
    [image] = await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()))
    request = type("Request", (), {"app": client.server.app})()  # served_file reads request.app only
    original = await served_file(request, image["image_id"])
    spec = renditions.parse_spec({"w": "320"}, None, settings.derivative_sizes, settings.derivative_quality)
    path = renditions.cache_path(SessionLayout(settings.storage), session_id, image["image_id"], spec.key, spec.extension)
    loop = asyncio.get_running_loop()

    def render_while_deleted(source):
        data = renditions.render(source, spec)
        # the delete lands while the render runs (on another thread, as a concurrent request would)
        asyncio.run_coroutine_threadsafe(client.delete(f"/api/face/image/{image['image_id']}"), loop).result()
        return data

    store = services.stores.of(original)
    with pytest.raises(ImageNotFound):
        if store.kind == "s3":  # an object's derivative is an object (put, then found orphaned and removed)
            await downloads._render_and_put(store, original, f"derived/{session_id}/{path.name}", "image/jpeg", render_while_deleted)
        else:
            await downloads._render_and_check(store, original, path, render_while_deleted)
    assert not path.exists()
    assert files_under(SessionLayout(settings.storage).sessions_root / str(session_id)) == []
    assert await derived_of(services, session_id) == []
