"""Close-up selfies (tests/selfies.py): a face filling 0.5-1.1 of a 3:4 portrait frame is found, in probes and
in uploads, and matches the right person's photo; its box comes back in the photo's pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import create_session, search, upload
from selfies import FRAME, closeup, jpeg

from faceserve.vision import detection

FILLS = [0.5, 0.7, 0.9, 1.1]
YAO_IN_PLAYERS = (742, 167)  # centre of #13's face in players.jpg


def _faces(engine, path) -> tuple[np.ndarray, np.ndarray]:
    pixels = cv2.imread(str(path))
    return pixels, engine.detect(pixels)[0]


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _near(box, point, tolerance: float) -> bool:
    x, y = _centre(box)
    return abs(x - point[0]) < tolerance and abs(y - point[1]) < tolerance


async def test_close_up_probes_find_the_right_persons_photo(client, photos, engine):
    """yaoming.jpg's face finds Yao Ming in players.jpg (another photo); a face of players.jpg or t1.jpg finds
    itself in its photo; at every fill, including 0.9 and 1.1, which the detector's one pass misses."""
    session_id = await create_session(client)
    players, t1, _ = await upload(
        client,
        session_id,
        ("players.jpg", photos["players"].read_bytes()),
        ("t1.jpg", photos["t1"].read_bytes()),
        ("gdp.jpg", photos["gdp"].read_bytes()),
    )
    yaoming_pixels, [yao] = _faces(engine, photos["yaoming"])
    players_pixels, players_boxes = _faces(engine, photos["players"])
    t1_pixels, t1_boxes = _faces(engine, photos["t1"])
    someone = players_boxes[np.argmax(players_boxes[:, 2] - players_boxes[:, 0])]  # not Yao: his is not largest
    assert not _near(someone, YAO_IN_PLAYERS, 30)
    cases = [  # (source, face, the photo it must find, where the face is in that photo)
        (yaoming_pixels, yao, players, YAO_IN_PLAYERS),
        (players_pixels, someone, players, _centre(someone)),
        (t1_pixels, t1_boxes[1], t1, _centre(t1_boxes[1])),
        (t1_pixels, t1_boxes[4], t1, _centre(t1_boxes[4])),
    ]
    width, height = FRAME
    for fill in FILLS:
        for source, box, photo, where in cases:
            status, body = await search(client, session_id, jpeg(closeup(source, box, fill)))
            assert status == 200, (fill, body)
            x1, y1, x2, y2 = body["data"]["probe_face"]["box"]
            # in the frame's pixels: the face's centre where the frame put it, its width about fill of the frame
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (fill, x1, y1, x2, y2)
            assert abs((x1 + x2) / 2 - width / 2) < 0.1 * width, (fill, x1, x2)
            assert 0.7 * fill * width < x2 - x1 <= 1.3 * min(fill, 1.0) * width, (fill, x1, x2)
            best = body["data"]["matches"][0]
            assert best["image_id"] == photo["image_id"], fill
            assert _near(best["box"], where, 30), (fill, best["box"], where)


async def test_a_stranger_behind_a_close_up_is_not_taken_for_the_guest(client, photos, engine):
    """The first pass misses the close-up and finds only a small face in the corner: a probe's own face is not
    that small, so the second pass runs and the guest's face is the one matched."""
    yaoming_pixels, [yao] = _faces(engine, photos["yaoming"])
    t1_pixels, t1_boxes = _faces(engine, photos["t1"])
    session_id = await create_session(client)
    players, _ = await upload(
        client,
        session_id,
        ("players.jpg", photos["players"].read_bytes()),
        ("t1.jpg", photos["t1"].read_bytes()),
    )
    frame = closeup(yaoming_pixels, yao, 0.9)
    frame[1200:1400, 30:180] = closeup(t1_pixels, t1_boxes[1], 0.5, (150, 200))
    assert len(engine.detect(frame)[0]) == 1  # the stranger alone
    status, body = await search(client, session_id, jpeg(frame))
    assert status == 200, body
    assert len(body["data"]["probe_faces"]) == 2
    x1, _, x2, _ = body["data"]["probe_face"]["box"]
    assert x2 - x1 > 0.7 * FRAME[0]
    assert [m["image_id"] for m in body["data"]["matches"]] == [players["image_id"]]


async def test_a_headshot_upload_has_its_face(client, photos, engine):
    """A portrait session's headshot (the face 0.9 of the frame): the upload records the face, and a probe from
    the original photo finds it."""
    pixels, boxes = _faces(engine, photos["t1"])
    session_id = await create_session(client)
    [headshot] = await upload(client, session_id, ("headshot.jpg", jpeg(closeup(pixels, boxes[2], 0.9))))
    assert headshot["faces"] == 1
    status, body = await search(client, session_id, jpeg(closeup(pixels, boxes[2], 0.5)))
    assert status == 200
    assert [m["image_id"] for m in body["data"]["matches"]] == [headshot["image_id"]]


def test_a_group_photo_needs_one_pass(engine, photos):
    """Small faces in an upload: no second pass, so ordinary photos cost what they did. As a probe, where the
    guest's own face is not that small, the same photo gets a second look."""
    for name in ("t1", "players", "gdp"):
        pixels, boxes = _faces(engine, photos[name])
        assert len(boxes) and not detection.needs_second_pass(boxes, pixels.shape[:2])
        assert detection.needs_second_pass(boxes, pixels.shape[:2], detection.SELFIE_SMALLEST)
    pixels, boxes = _faces(engine, photos["yaoming"])
    assert not detection.needs_second_pass(boxes, pixels.shape[:2], detection.SELFIE_SMALLEST)


@pytest.mark.parametrize("shape", [(1440, 1080), (600, 1600), (37, 41)])
def test_the_canvas_maps_back_to_the_photo(shape):
    """A point of the photo, through the letterbox and back, is where it was (boxes and landmarks alike)."""
    image = np.zeros((*shape, 3), dtype=np.uint8)
    canvas, scale, offset = detection.letterbox(image, 640, detection.SHRINK)
    assert canvas.shape == (640, 640, 3)
    height, width = shape
    points = np.array([[0.0, 0.0], [width / 3, height / 2], [width, height]], dtype=np.float32)
    on_canvas = points * scale + offset
    assert (on_canvas >= 0).all() and (on_canvas <= 640).all()
    box = np.array([[*on_canvas[0], *on_canvas[1], 0.9]], dtype=np.float32)
    back_boxes, back_landmarks = detection.to_photo(box, np.stack([on_canvas] * 5, axis=1)[:1], scale, offset, shape)
    np.testing.assert_allclose(back_boxes[0, :4], [*points[0], *points[1]], atol=0.6)
    np.testing.assert_allclose(back_landmarks[0, 0], points[0], atol=0.6)
    assert back_boxes[0, 4] == pytest.approx(0.9)


def test_merge_keeps_one_box_per_face():
    first = np.array([[10, 10, 110, 130, 0.6], [300, 10, 360, 80, 0.7]], dtype=np.float32)
    second = np.array([[12, 8, 112, 128, 0.9]], dtype=np.float32)
    landmarks = np.zeros((2, 5, 2), dtype=np.float32)
    boxes, kept_landmarks = detection.merge(first, landmarks, second, np.ones((1, 5, 2), dtype=np.float32))
    assert sorted(boxes[:, 4].tolist()) == pytest.approx([0.7, 0.9])  # the better of the two boxes of one face
    assert kept_landmarks[0].sum() == 10  # the second pass's landmarks came with its box
