"""HEIC/HEIF and AVIF, what current phones save: uploaded and searched like JPEG, stored as they came, served
with their Content-Type, resized copies and face crops as JPEG or WebP, the file's orientation honoured."""

from __future__ import annotations

import io

import pytest
from helpers import create_session, search, upload
from PIL import Image
from yarl import URL

_ORIENTATION = 0x0112


def _phone_file(path, image_format: str) -> bytes:
    """The photo as a phone keeps it: pixels as the sensor lay (turned a quarter), EXIF orientation 6 to
    show them upright."""
    upright = Image.open(path).convert("RGB")
    exif = Image.Exif()
    exif[_ORIENTATION] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format=image_format, exif=exif.tobytes(), quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize(("image_format", "content_type"), [("HEIF", "image/heic"), ("AVIF", "image/avif")])
async def test_a_phone_format_is_uploaded_searched_and_served(client, photos, image_format, content_type):
    selfie = _phone_file(photos["yaoming"], image_format)
    width, height = Image.open(photos["yaoming"]).size
    session_id = await create_session(client)
    players, stored = await upload(
        client, session_id, ("players.jpg", photos["players"].read_bytes()), ("selfie.file", selfie)
    )
    assert stored["faces"] == 1  # found upright: the orientation was applied before detection
    assert stored["content_type"] == content_type
    assert (stored["width"], stored["height"]) == (width, height)
    assert stored["identity"].endswith("." + ("heic" if image_format == "HEIF" else "avif"))

    original = await client.get(f"/api/face/image/{stored['image_id']}")
    assert original.status == 200 and original.headers["Content-Type"] == content_type
    assert await original.read() == selfie  # stored as it came

    for accept, served in (("image/webp,*/*", "image/webp"), ("*/*", "image/jpeg")):
        resized = await client.get(f"/api/face/image/{stored['image_id']}?w=320", headers={"Accept": accept})
        assert resized.status == 200 and resized.headers["Content-Type"] == served
        copy = Image.open(io.BytesIO(await resized.read()))
        assert copy.width < copy.height  # upright, as the photo shows

    status, body = await search(client, session_id, selfie)  # the phone's file as the probe
    assert status == 200, body
    assert {m["image_id"] for m in body["data"]["matches"]} == {players["image_id"], stored["image_id"]}
    mine = next(m for m in body["data"]["matches"] if m["image_id"] == stored["image_id"])
    crop = await client.get(URL(mine["face_url"]).path_qs)
    assert crop.status == 200 and crop.headers["Content-Type"] == "image/jpeg"


async def test_a_cut_heic_is_415_not_500(client, photos):
    selfie = _phone_file(photos["yaoming"], "HEIF")
    session_id = await create_session(client)
    status, body = await search(client, session_id, selfie[: len(selfie) // 2])
    assert status == 415, body
    assert body["error"] == {"code": "not_an_image", "message": "image data is truncated or corrupt"}
