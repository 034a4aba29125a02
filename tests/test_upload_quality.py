"""An upload's weak faces (too small, blurred, turned: vision/quality.py) are kept and marked, never refused:
faces.quality, shown where the API lists faces; people clustering leaves them out, at once and on re-clustering."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from aiohttp.test_utils import TestClient
from helpers import create_session, search, upload
from selfies import closeup, jpeg
from test_people import images_of, person_with_image, recluster

from faceserve.http.appkeys import SERVICES


def _yao_selfie(engine, photos: dict[str, Path], fill: float = 0.5) -> np.ndarray:
    """yaoming.jpg's face as a phone's selfie: sharp and frontal."""
    pixels = cv2.imread(str(photos["yaoming"]))
    return closeup(pixels, engine.detect(pixels)[0][0], fill)


def _shaken(pixels: np.ndarray, length: int) -> np.ndarray:
    kernel = np.zeros((length, length), dtype=np.float32)
    kernel[length // 2, :] = 1 / length  # a hand shaking sideways
    return cv2.filter2D(pixels, -1, kernel)


def _far(pixels: np.ndarray, factor: float) -> np.ndarray:
    """The photo shrunk in the middle of a grey frame of its size: the face far away."""
    small = cv2.resize(pixels, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    frame = np.full_like(pixels, 128)
    top, left = (frame.shape[0] - small.shape[0]) // 2, (frame.shape[1] - small.shape[1]) // 2
    frame[top : top + small.shape[0], left : left + small.shape[1]] = small
    return frame


async def _qualities(client: TestClient, image_ids: list[int]) -> dict[int, list[str | None]]:
    rows = await client.server.app[SERVICES].pool.fetch(
        "SELECT image_id, quality FROM faces WHERE image_id = ANY($1::bigint[]) ORDER BY id", image_ids
    )
    found: dict[int, list[str | None]] = {}
    for row in rows:
        found.setdefault(row["image_id"], []).append(row["quality"])
    return found


async def test_weak_faces_are_kept_marked_and_shown(client: TestClient, photos, engine) -> None:
    selfie = _yao_selfie(engine, photos)
    session_id = await create_session(client)
    images = await upload(  # 201 for all of them (upload() checks): never refused for quality
        client,
        session_id,
        ("sharp.jpg", jpeg(selfie)),
        ("blurred.jpg", jpeg(cv2.GaussianBlur(selfie, (0, 0), 12))),
        ("shaken.jpg", jpeg(_shaken(selfie, 41))),
        ("far.jpg", jpeg(_far(selfie, 0.05))),  # 14 px between the eyes
    )
    ids = {image["original_name"]: image["image_id"] for image in images}
    assert all(image["faces"] == 1 for image in images), images
    expected = {"sharp.jpg": "ok", "blurred.jpg": "blurred", "shaken.jpg": "blurred", "far.jpg": "too_small"}
    stored = await _qualities(client, list(ids.values()))
    assert {name: stored[ids[name]] for name in ids} == {name: [label] for name, label in expected.items()}

    # each is still found by a sharp selfie, and its match says how good the face is
    status, body = await search(client, session_id, jpeg(selfie))
    assert status == 200, body
    by_image = {match["image_id"]: match for match in body["data"]["matches"]}
    assert {name: by_image[ids[name]]["quality"] for name in ids} == expected

    # a face recorded before the measure existed (NULL) is shown as not measured
    await client.server.app[SERVICES].pool.execute("UPDATE faces SET quality = NULL WHERE image_id = $1", ids["sharp.jpg"])
    status, body = await search(client, session_id, jpeg(selfie))
    assert {m["image_id"]: m["quality"] for m in body["data"]["matches"]}[ids["sharp.jpg"]] is None


async def test_people_leave_weak_faces_out(client: TestClient, photos, engine) -> None:
    """Blurred copies of Yao Ming's face are close enough to join him (similarity 0.6-0.9 to his two photos)
    and pass the size and detection-score floor, so only their mark keeps them out of his person."""
    selfie = _yao_selfie(engine, photos)
    session_id = await create_session(client)
    images = await upload(
        client,
        session_id,
        ("players.jpg", photos["players"].read_bytes()),
        ("yaoming.jpg", photos["yaoming"].read_bytes()),
        ("blurred.jpg", jpeg(cv2.GaussianBlur(selfie, (0, 0), 12))),
        ("shaken.jpg", jpeg(_shaken(selfie, 41))),
    )
    ids = {image["original_name"]: image["image_id"] for image in images}
    await recluster(client, session_id)
    yao = await person_with_image(client, session_id, ids["yaoming.jpg"])
    assert yao is not None
    shown = {image["image_id"]: image["quality"] for image in await images_of(client, session_id, yao["person_id"])}
    assert shown == {ids["players.jpg"]: "ok", ids["yaoming.jpg"]: "ok"}
    for weak in ("blurred.jpg", "shaken.jpg"):
        assert await person_with_image(client, session_id, ids[weak]) is None

    # between clusterings a new weak face joins no one, where a sharp one joins at once
    (weak,) = await upload(client, session_id, ("shaken-more.jpg", jpeg(_shaken(selfie, 45))))
    (sharp,) = await upload(client, session_id, ("closer.jpg", jpeg(_yao_selfie(engine, photos, 0.6))))
    assert (await _qualities(client, [weak["image_id"]]))[weak["image_id"]] == ["blurred"]
    assert await person_with_image(client, session_id, weak["image_id"]) is None
    joined = await person_with_image(client, session_id, sharp["image_id"])
    assert joined is not None and joined["person_id"] == yao["person_id"]

