"""Search: the right photo first, strangers not at all, deletes take effect at once, no face is 422."""

from __future__ import annotations

import io

import cv2
import numpy as np
from helpers import create_session, search, upload
from PIL import Image

from faceserve.config import Settings
from faceserve.vision import quality


def _crop_of_largest_face(engine, path) -> bytes:
    """A new photo made from one face of an uploaded one: crop around it, rescale, re-encode. The largest face
    that looks at the camera: a turned one is refused as a probe (tests/test_probe_quality.py), and gdp.jpg's
    largest face is a three-quarter view."""
    pixels = cv2.imread(str(path))
    boxes, landmarks = engine.detect(pixels)
    crops = engine.align(pixels, landmarks)
    facing = [quality.measure(landmarks[i], crops[i]).turn <= Settings.probe_max_turn for i in range(len(boxes))]
    areas = np.where(facing, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), -1)
    x1, y1, x2, y2 = boxes[np.argmax(areas), :4]
    w, h = x2 - x1, y2 - y1
    crop = pixels[max(0, int(y1 - h)) : int(y2 + h), max(0, int(x1 - w)) : int(x2 + w)]
    crop = cv2.resize(crop, None, fx=1.5, fy=1.5)
    ok, encoded = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return encoded.tobytes()


async def test_a_crop_of_a_face_finds_its_photo_first(client, photos, engine):
    session_id = await create_session(client)
    images = await upload(
        client,
        session_id,
        ("t1.jpg", photos["t1"].read_bytes()),
        ("gdp.jpg", photos["gdp"].read_bytes()),
        ("players.jpg", photos["players"].read_bytes()),
    )
    by_name = {i["original_name"]: i for i in images}
    for name in ("t1", "gdp"):
        status, body = await search(client, session_id, _crop_of_largest_face(engine, photos[name]))
        assert status == 200, body
        matches = body["data"]["matches"]
        assert matches[0]["image_id"] == by_name[f"{name}.jpg"]["image_id"]
        assert matches[0]["identity"] == by_name[f"{name}.jpg"]["identity"]
        assert matches[0]["url"] == by_name[f"{name}.jpg"]["url"]
        assert matches[0]["distance"] < 0.3
        distances = [m["distance"] for m in matches]
        assert distances == sorted(distances)
        assert len({m["image_id"] for m in matches}) == len(matches)  # one match per image


async def test_the_same_person_in_another_photo_is_found(client, photos):
    """yaoming.jpg and players.jpg (#13) show the same man in different photos."""
    session_id = await create_session(client)
    images = await upload(
        client, session_id, ("players.jpg", photos["players"].read_bytes()), ("t1.jpg", photos["t1"].read_bytes())
    )
    status, body = await search(client, session_id, photos["yaoming"].read_bytes())
    assert status == 200
    matches = body["data"]["matches"]
    assert [m["image_id"] for m in matches] == [images[0]["image_id"]]
    x1, y1, x2, y2 = matches[0]["box"]
    assert 700 < (x1 + x2) / 2 < 790 and 130 < (y1 + y2) / 2 < 210  # #13, standing centre back


async def test_another_persons_photo_does_not_match(client, photos):
    session_id = await create_session(client)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()), ("gdp.jpg", photos["gdp"].read_bytes()))
    status, body = await search(client, session_id, photos["yaoming"].read_bytes())
    assert status == 200
    assert body["data"]["matches"] == []


async def test_threshold_and_limit_fields(client, photos, engine):
    session_id = await create_session(client)
    await upload(client, session_id, ("t1.jpg", photos["t1"].read_bytes()), ("gdp.jpg", photos["gdp"].read_bytes()))
    probe = _crop_of_largest_face(engine, photos["t1"])
    _, everything = await search(client, session_id, probe, threshold="2.0")
    assert len(everything["data"]["matches"]) == 2
    _, one = await search(client, session_id, probe, threshold="2.0", limit="1")
    assert len(one["data"]["matches"]) == 1
    _, none = await search(client, session_id, probe, threshold="0.0")
    assert none["data"]["matches"] == []
    status, bad = await search(client, session_id, probe, threshold="abc")
    assert status == 400 and bad["error"]["code"] == "bad_request"


async def test_delete_removes_file_row_and_search_hit(client, photos, engine, services, settings):
    session_id = await create_session(client)
    [t1, gdp] = await upload(
        client, session_id, ("t1.jpg", photos["t1"].read_bytes()), ("gdp.jpg", photos["gdp"].read_bytes())
    )
    probe = _crop_of_largest_face(engine, photos["t1"])
    _, before = await search(client, session_id, probe)
    assert before["data"]["matches"][0]["image_id"] == t1["image_id"]
    stored = settings.storage / "face_sessions" / t1["identity"]
    assert stored.exists()

    response = await client.delete(f"/api/face/image/{t1['image_id']}")
    assert response.status == 200
    assert not stored.exists()
    assert (await client.get(f"/api/face/image/{t1['image_id']}")).status == 404
    _, after = await search(client, session_id, probe, threshold="2.0")
    assert t1["image_id"] not in [m["image_id"] for m in after["data"]["matches"]]
    assert len(await services.indexes.get(session_id)) == gdp["faces"]
    assert (await client.delete(f"/api/face/image/{t1['image_id']}")).status == 404


async def test_probe_without_a_face_is_422(client):
    session_id = await create_session(client)
    buffer = io.BytesIO()
    Image.fromarray(np.full((200, 200, 3), 128, dtype=np.uint8)).save(buffer, "JPEG")
    status, body = await search(client, session_id, buffer.getvalue())
    assert status == 422
    assert body["error"]["code"] == "no_face_found"


async def test_search_input_errors(client, photos):
    status, body = await search(client, 987654, photos["yaoming"].read_bytes())
    assert status == 404 and body["error"]["code"] == "session_not_found"
    # the session is looked up while the probe is analysed: a missing one still wins over a bad probe
    buffer = io.BytesIO()
    Image.fromarray(np.full((200, 200, 3), 128, dtype=np.uint8)).save(buffer, "JPEG")
    for probe in (b"not an image", buffer.getvalue()):
        status, body = await search(client, 987654, probe)
        assert status == 404 and body["error"]["code"] == "session_not_found"
    session_id = await create_session(client)
    status, body = await search(client, session_id, b"not an image")
    assert status == 415
    response = await client.post("/api/face/search", data={"session_id": str(session_id)})
    assert response.status == 400


async def test_server_timing_names_each_step(client, photos):
    import aiohttp

    session_id = await create_session(client)
    await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    form = aiohttp.FormData()
    form.add_field("session_id", str(session_id))
    form.add_field("image", photos["yaoming"].read_bytes(), filename="probe.jpg")
    response = await client.post("/api/face/search", data=form)
    assert response.status == 200
    steps = dict(item.strip().split(";dur=") for item in response.headers["Server-Timing"].split(","))
    assert set(steps) == {"parse", "db", "decode", "detect", "embed", "index"}
    assert all(float(ms) >= 0 for ms in steps.values()) and float(steps["detect"]) > 0
