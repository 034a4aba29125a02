"""Resized copies (?w=, ?h=, ?fit=) and face crops: real photos, real files, the real detector on the output."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import create_session, upload
from PIL import Image

from faceserve.errors import BadRequest
from faceserve.http.serving import CACHE_FOREVER
from faceserve.layout import SessionLayout
from faceserve.media import renditions


def _decode(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def _derived(settings, session_id: int, image_id: int) -> list[Path]:
    folder = Path(settings.storage) / "face_sessions" / str(session_id) / "derived"
    return sorted(folder.glob(f"{image_id}-*")) if folder.exists() else []


async def _uploaded(client, name: str, data: bytes) -> tuple[int, dict]:
    session_id = await create_session(client)
    [image] = await upload(client, session_id, (name, data))
    return session_id, image


def _oriented_jpeg(pixels: Image.Image, orientation: int) -> bytes:
    """The pixels stored as they are, with an EXIF orientation tag telling viewers how to turn them."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    pixels.save(out, "JPEG", quality=92, exif=exif.tobytes())
    return out.getvalue()


async def _face_ids(services, image_id: int) -> list[int]:
    rows = await services.pool.fetch("SELECT id FROM faces WHERE image_id = $1 ORDER BY id", image_id)
    return [r["id"] for r in rows]


# ---------------------------------------------------------------- resized copies


async def test_resized_jpeg_has_the_width_the_aspect_and_the_caching_headers(client, photos):
    _, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    url = f"/api/face/image/{image['image_id']}"
    response = await client.get(url, params={"w": "320"})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "image/jpeg"
    assert response.headers["Cache-Control"] == CACHE_FOREVER
    assert response.headers["Vary"] == "Accept"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Last-Modified" in response.headers
    etag = response.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    resized = _decode(await response.read())
    assert resized.format == "JPEG"
    assert resized.width == 320
    assert abs(resized.height - 320 * image["height"] / image["width"]) <= 1
    original = await client.get(url)
    assert original.headers["ETag"] != etag
    assert "Vary" not in original.headers


async def test_height_only_and_both_sides_keep_the_aspect_inside_the_box(client, photos):
    _, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    url = f"/api/face/image/{image['image_id']}"
    aspect = image["width"] / image["height"]
    tall = _decode(await (await client.get(url, params={"h": "240"})).read())
    assert tall.height == 240 and abs(tall.width - 240 * aspect) <= 1
    boxed = _decode(await (await client.get(url, params={"w": "320", "h": "160"})).read())
    assert boxed.height == 160 and boxed.width <= 320 and abs(boxed.width - 160 * aspect) <= 1


async def test_inside_never_upscales(client, photos):
    _, image = await _uploaded(client, "yaoming.jpg", photos["yaoming"].read_bytes())
    assert image["width"] < 640
    body = await (await client.get(f"/api/face/image/{image['image_id']}", params={"w": "640"})).read()
    assert _decode(body).size == (image["width"], image["height"])


async def test_cover_fills_the_box_exactly(client, photos):
    _, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    url = f"/api/face/image/{image['image_id']}"
    for w, h in (("320", "320"), ("160", "480")):
        response = await client.get(url, params={"w": w, "h": h, "fit": "cover"})
        assert response.status == 200
        assert _decode(await response.read()).size == (int(w), int(h))


async def test_webp_when_accept_lists_it_and_jpeg_otherwise(client, photos):
    _, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    url = f"/api/face/image/{image['image_id']}?w=320"
    webp = await client.get(url, headers={"Accept": "image/avif,image/webp,*/*;q=0.8"})
    assert webp.headers["Content-Type"] == "image/webp"
    assert webp.headers["Vary"] == "Accept"
    body = await webp.read()
    assert body[:4] == b"RIFF" and body[8:12] == b"WEBP"
    assert _decode(body).width == 320
    for accept in (None, "*/*", "image/*", "image/webp;q=0, image/jpeg"):
        jpeg = await client.get(url, headers={"Accept": accept} if accept else {})
        assert jpeg.headers["Content-Type"] == "image/jpeg", accept
        assert jpeg.headers["Vary"] == "Accept"
        assert (await jpeg.read())[:2] == b"\xff\xd8"
        assert jpeg.headers["ETag"] != webp.headers["ETag"]


async def test_second_request_serves_the_cached_file_without_rendering(client, photos, settings):
    session_id, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    url = f"/api/face/image/{image['image_id']}?w=320"
    first = await client.get(url)
    first_body = await first.read()
    [cached] = _derived(settings, session_id, image["image_id"])
    assert cached.suffix == ".jpg" and cached.read_bytes() == first_body
    before = cached.stat()
    second = await client.get(url)
    assert await second.read() == first_body
    assert second.headers["ETag"] == first.headers["ETag"]
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _derived(settings, session_id, image["image_id"]) == [cached]


async def test_concurrent_first_requests_get_one_whole_file(client, photos, settings):
    session_id, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    url = f"/api/face/image/{image['image_id']}?w=640"

    async def fetch() -> tuple[int, bytes]:
        response = await client.get(url)
        return response.status, await response.read()

    results = await asyncio.gather(*(fetch() for _ in range(12)))
    assert {status for status, _ in results} == {200}
    assert len({body for _, body in results}) == 1
    [cached] = _derived(settings, session_id, image["image_id"])  # no temporary file left behind
    assert cached.read_bytes() == results[0][1]


async def test_etags_differ_by_size_and_conditional_requests_work(client, photos):
    _, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    url = f"/api/face/image/{image['image_id']}"
    tags = {(await client.get(url, params=params)).headers["ETag"] for params in ({"w": "320"}, {"w": "640"}, {})}
    assert len(tags) == 3
    response = await client.get(url, params={"w": "320"})
    etag = response.headers["ETag"]
    not_modified = await client.get(url, params={"w": "320"}, headers={"If-None-Match": etag})
    assert not_modified.status == 304
    assert not_modified.headers["ETag"] == etag
    assert not_modified.headers["Vary"] == "Accept"
    assert not_modified.headers["Cache-Control"] == CACHE_FOREVER
    assert await not_modified.read() == b""
    other = await client.get(url, params={"w": "640"}, headers={"If-None-Match": etag})
    assert other.status == 200
    assert (await client.get(url, params={"w": "320"}, headers={"If-Match": '"nope"'})).status == 412


async def test_head_and_byte_ranges_on_a_derivative(client, photos):
    _, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    url = f"/api/face/image/{image['image_id']}?w=320"
    head = await client.head(url)
    assert head.status == 200 and await head.read() == b""
    body = await (await client.get(url)).read()
    assert int(head.headers["Content-Length"]) == len(body)
    assert head.headers["ETag"] == (await client.get(url)).headers["ETag"]
    part = await client.get(url, headers={"Range": "bytes=0-99"})
    assert part.status == 206
    assert part.headers["Content-Range"] == f"bytes 0-99/{len(body)}"
    assert await part.read() == body[:100]


@pytest.mark.parametrize(
    "query",
    ["w=321", "w=0", "w=abc", "w=-320", "h=99999", "w=320&fit=stretch", "fit=cover", "w=320&h=7"],
)
async def test_a_size_outside_the_set_or_a_bad_fit_is_400_json(client, photos, settings, query):
    session_id, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    response = await client.get(f"/api/face/image/{image['image_id']}?{query}")
    assert response.status == 400
    body = await response.json()
    assert body["success"] is False and body["error"]["code"] == "bad_request"
    assert response.headers["Cache-Control"] == "no-store"
    assert _derived(settings, session_id, image["image_id"]) == []


async def test_derivative_of_an_unknown_image_is_404_json(client):
    response = await client.get("/api/face/image/999999?w=320")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "image_not_found"


async def test_exif_orientation_is_applied(client):
    # stored 400x200, left half red; orientation 6 shows it turned a quarter clockwise: 200x400, red on top
    stored = Image.new("RGB", (400, 200), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 200, 200))
    _, image = await _uploaded(client, "turned.jpg", _oriented_jpeg(stored, 6))
    assert (image["width"], image["height"]) == (200, 400)
    for params in ({"w": "160"}, {"w": "160", "h": "160", "fit": "cover"}):
        body = await (await client.get(f"/api/face/image/{image['image_id']}", params=params)).read()
        shown = _decode(body).convert("RGB")
        assert shown.width == 160
        top, bottom = shown.getpixel((80, 10)), shown.getpixel((80, shown.height - 10))
        assert top[0] > 200 and top[2] < 60, top
        assert bottom[2] > 200 and bottom[0] < 60, bottom
    assert shown.size == (160, 160)
    upright = _decode(await (await client.get(f"/api/face/image/{image['image_id']}?w=160")).read())
    assert upright.size == (160, 320)
    assert "exif" not in upright.info or upright.getexif().get(0x0112, 1) == 1


async def test_deleting_the_image_removes_its_derivatives(client, photos, settings):
    session_id, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    _, other = await _uploaded(client, "gdp.jpg", photos["gdp"].read_bytes())
    url = f"/api/face/image/{image['image_id']}"
    for params in ({"w": "320"}, {"w": "160", "h": "160", "fit": "cover"}):
        assert (await client.get(url, params=params)).status == 200
    assert len(_derived(settings, session_id, image["image_id"])) == 2
    assert (await client.delete(url)).status == 200
    assert _derived(settings, session_id, image["image_id"]) == []
    assert (await client.get(url, params={"w": "320"})).status == 404
    assert (await client.get(f"/api/face/image/{other['image_id']}?w=320")).status == 200


# ---------------------------------------------------------------- face crops


async def test_face_crop_shows_the_face(client, photos, services, engine, settings):
    _, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    face_ids = await _face_ids(services, image["image_id"])
    assert len(face_ids) == image["faces"] >= 2
    bodies = set()
    for face_id in face_ids:
        response = await client.get(f"/api/face/face/{face_id}")
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.headers["Cache-Control"] == CACHE_FOREVER
        assert response.headers["Vary"] == "Accept"
        body = await response.read()
        bodies.add(body)
        crop = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_COLOR)
        boxes, _ = engine.detect(crop)
        assert len(boxes) >= 1, f"no face in the crop of face {face_id}"
        # the padding makes the face a large part of the crop, not one of several small ones
        largest = max((b[2] - b[0]) * (b[3] - b[1]) for b in boxes)
        assert largest > 0.15 * crop.shape[0] * crop.shape[1]
    assert len(bodies) == len(face_ids)


async def test_a_16_bit_greyscale_png_renders_its_tones_not_white(client, photos, services, engine):
    """Pillow opens such a PNG in mode I;16, which convert("RGB") clips: every pixel came out white."""
    grey = cv2.cvtColor(cv2.imread(str(photos["yaoming"])), cv2.COLOR_BGR2GRAY)
    ok, png = cv2.imencode(".png", grey.astype(np.uint16) * 257)  # the same tones in 16 bits
    assert ok
    _, image = await _uploaded(client, "grey16.png", png.tobytes())
    [face_id] = await _face_ids(services, image["image_id"])
    for path in (f"/api/face/image/{image['image_id']}?w=160", f"/api/face/face/{face_id}"):
        response = await client.get(path)
        assert response.status == 200, await response.text()
        rendered = np.asarray(_decode(await response.read()).convert("L"), dtype=np.float32)
        assert rendered.std() > 20, path  # a photo's contrast, not a blank
        if "w=160" in path:
            expected = cv2.resize(grey, (rendered.shape[1], rendered.shape[0]), interpolation=cv2.INTER_AREA)
            assert abs(rendered.mean() - expected.mean()) < 8
        else:
            assert len(engine.detect(cv2.cvtColor(rendered.astype(np.uint8), cv2.COLOR_GRAY2BGR))[0]) == 1


async def test_face_crop_width_webp_and_conditional(client, photos, services):
    _, image = await _uploaded(client, "t1.jpg", photos["t1"].read_bytes())
    [face_id, *_] = await _face_ids(services, image["image_id"])
    url = f"/api/face/face/{face_id}"
    full = _decode(await (await client.get(url)).read())
    small = await client.get(url, params={"w": "64"}, headers={"Accept": "image/webp"})
    assert small.headers["Content-Type"] == "image/webp"
    scaled = _decode(await small.read())
    assert scaled.width == min(64, full.width)
    assert abs(scaled.height - scaled.width * full.height / full.width) <= 1
    etag = small.headers["ETag"]
    again = await client.get(url, params={"w": "64"}, headers={"Accept": "image/webp", "If-None-Match": etag})
    assert again.status == 304
    assert (await client.get(url, params={"w": "65"})).status == 400


async def test_face_crop_of_a_large_exif_turned_photo(client, photos, services, engine):
    # t1 at 3x (10 MP), stored turned a quarter anticlockwise with orientation 6: displayed upright, and its
    # faces boxed upright. Full size, 160 and 64 px wide decode at 1/1, 1/2 and 1/4 scale.
    upright = Image.open(photos["t1"]).convert("RGB")
    upright = upright.resize((upright.width * 3, upright.height * 3), Image.Resampling.BICUBIC)
    data = _oriented_jpeg(upright.transpose(Image.Transpose.ROTATE_90), 6)
    _, image = await _uploaded(client, "turned-t1.jpg", data)
    assert (image["width"], image["height"]) == upright.size
    face_ids = await _face_ids(services, image["image_id"])
    assert len(face_ids) >= 2
    for face_id in face_ids:
        for width in (None, 160, 64):
            params = {"w": str(width)} if width else {}
            body = await (await client.get(f"/api/face/face/{face_id}", params=params)).read()
            crop = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_COLOR)
            if width:
                assert crop.shape[1] == width
            boxes, _ = engine.detect(crop)
            assert len(boxes) >= 1, f"no face in the crop of face {face_id} at width {width}"


async def test_unknown_face_is_404_json(client):
    for path in ("/api/face/face/999999", "/api/face/face/abc", "/api/face/face/-1"):
        response = await client.get(path)
        assert response.status == 404, path
        body = await response.json()
        assert body["success"] is False and body["error"]["code"] == "face_not_found"


# ---------------------------------------------------------------- the domain functions


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_an_animated_image_is_indexed_and_rendered_by_its_first_frame(image_format):
    """What README promises of animated PNG and WebP: the faces and the resized copies are the first frame's."""
    from faceserve.media import decoding

    frames = [Image.new("RGB", (64, 48), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    out = io.BytesIO()
    frames[0].save(out, image_format, save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = out.getvalue()
    assert decoding.probe(data, 10_000_000).format == image_format
    blue, green, red = decoding.decode_bgr(data)[10, 10]
    assert red > 240 and green < 16 and blue < 16
    rendered = _decode(renditions.render(data, renditions.Spec(64, None, "inside", "jpeg", 82)))
    r, g, b = rendered.convert("RGB").getpixel((10, 10))
    assert r > 240 and g < 16 and b < 16


def test_negotiate_format():
    assert renditions.negotiate_format(None) == "jpeg"
    assert renditions.negotiate_format("image/webp") == "webp"
    assert renditions.negotiate_format("text/html, image/WebP;q=0.9") == "webp"
    assert renditions.negotiate_format("image/webp;q=0") == "jpeg"
    assert renditions.negotiate_format("image/*, */*") == "jpeg"


def test_parse_spec_normalises_and_validates():
    sizes = (160, 320)
    spec = renditions.parse_spec({"w": "320", "fit": "cover"}, None, sizes, 82)
    assert spec == renditions.Spec(320, None, "inside", "jpeg", 82)  # one side: cover is inside
    assert spec.key == "w320-q82" and spec.extension == "jpg"
    both = renditions.parse_spec({"w": "320", "h": "160", "fit": "cover"}, "image/webp", sizes, 82)
    assert both.key == "w320-h160-cover-q82" and both.extension == "webp"
    assert renditions.parse_spec({"h": "160", "exp": "1", "sig": "x"}, None, sizes, 82).height == 160
    for query in ({"w": "161"}, {"w": "३२०"}, {"w": " 320"}, {"w": "0320"}, {"w": "9" * 5000}, {"fit": "inside"}, {"w": "160", "fit": "fill"}):
        with pytest.raises(BadRequest):
            renditions.parse_spec(query, None, sizes, 82)
    assert not renditions.is_derivative_query({"exp": "1", "kid": "a", "sig": "b", "w": ""})


def test_etag_is_strong_and_depends_on_source_and_key():
    tag = renditions.etag("ab" * 32, "w320-q82", "jpg")
    assert tag.startswith('"') and tag.endswith('"') and len(tag) == 34
    assert tag == renditions.etag("ab" * 32, "w320-q82", "jpg")
    assert tag != renditions.etag("ab" * 32, "w320-q82", "webp")
    assert tag != renditions.etag("cd" * 32, "w320-q82", "jpg")


def test_remove_derivatives_touches_only_that_image(tmp_path):
    folder = SessionLayout(tmp_path).derived_dir(3)
    folder.mkdir(parents=True)
    names = ["1-w320-q82.jpg", "1-face9-p0.4-q82.webp", ".1-w64-q82.jpg.ab12.tmp", "12-w320-q82.jpg", "2-w320-q82.jpg"]
    for name in names:
        (folder / name).write_bytes(b"x")
    assert renditions.remove_derivatives(SessionLayout(tmp_path), 3, 1) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["12-w320-q82.jpg", "2-w320-q82.jpg"]
    assert renditions.remove_derivatives(SessionLayout(tmp_path), 4, 1) == 0


def test_padded_box_is_clipped_to_the_image():
    assert renditions.padded_box((10, 10, 20, 30), 0.5, (100, 100)) == (5, 0, 25, 40)
    assert renditions.padded_box((90, 90, 100, 100), 1.0, (95, 95)) == (80, 80, 95, 95)


def test_draft_factor_keeps_twice_the_output_below_half_scale():
    assert renditions.draft_factor(1.0) == 1
    assert renditions.draft_factor(0.6) == 1
    assert renditions.draft_factor(0.5) == 2  # 1/2 scaling is near-lossless at any ratio
    assert renditions.draft_factor(0.25) == 2
    assert renditions.draft_factor(0.125) == 4
    assert renditions.draft_factor(0.0625) == 8
    assert renditions.draft_factor(0.01) == 8
