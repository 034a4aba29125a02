"""A probe with several faces: every one is listed, `face=N` matches another than the largest, `match=all`
finds the photos in which all of them appear, each with its faces."""

from __future__ import annotations

import cv2
from helpers import create_session, search, upload
from selfies import jpeg, side_by_side, two_faces


def _centre_x(box) -> float:
    return (box[0] + box[2]) / 2


async def test_several_faces_one_picked_or_all_together(client, photos, engine):
    players, t1 = cv2.imread(str(photos["players"])), cv2.imread(str(photos["t1"]))
    yaoming = cv2.imread(str(photos["yaoming"]))
    session_id = await create_session(client)
    with_yao, with_t1, together = await upload(
        client,
        session_id,
        ("players.jpg", photos["players"].read_bytes()),
        ("t1.jpg", photos["t1"].read_bytes()),
        ("together.jpg", jpeg(side_by_side(players, t1))),  # Yao (#13) and the people of t1.jpg in one photo
    )
    probe = jpeg(two_faces(engine, yaoming, t1))

    status, largest = await search(client, session_id, probe)
    assert status == 200, largest
    data = largest["data"]
    assert [f["index"] for f in data["probe_faces"]] == [0, 1]
    assert _centre_x(data["probe_faces"][0]["box"]) < 540 < _centre_x(data["probe_faces"][1]["box"])
    assert data["used"] == [0] and data["probe_face"] == data["probe_faces"][0]
    assert {m["image_id"] for m in data["matches"]} == {with_yao["image_id"], together["image_id"]}

    status, picked = await search(client, session_id, probe, face="1")
    assert status == 200, picked
    assert picked["data"]["used"] == [1] and picked["data"]["probe_face"]["index"] == 1
    assert {m["image_id"] for m in picked["data"]["matches"]} == {with_t1["image_id"], together["image_id"]}

    status, both = await search(client, session_id, probe, match="all")
    assert status == 200, both
    assert both["data"]["used"] == [0, 1]
    [match] = both["data"]["matches"]  # only the photo with both of them
    assert match["image_id"] == together["image_id"]
    yao, mate = match["faces"]
    assert (yao["probe_index"], mate["probe_index"]) == (0, 1) and yao["face_id"] != mate["face_id"]
    assert _centre_x(yao["box"]) < players.shape[1] < _centre_x(mate["box"])  # Yao in the left half
    assert match["distance"] == max(yao["distance"], mate["distance"])


async def test_bad_face_and_match_fields_are_400(client, photos):
    session_id = await create_session(client)
    await upload(client, session_id, ("players.jpg", photos["players"].read_bytes()))
    yaoming = photos["yaoming"].read_bytes()
    for fields in ({"face": "1"}, {"face": "-1"}, {"face": "x"}, {"match": "some"}, {"face": "0", "match": "all"}):
        status, body = await search(client, session_id, yaoming, **fields)
        assert status == 400, (fields, body)
        assert body["error"]["code"] == "bad_request"
    status, body = await search(client, session_id, yaoming, face="0", match="one")
    assert status == 200 and body["data"]["used"] == [0]
