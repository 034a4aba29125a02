"""Sessions: create, list, show with counts, delete with everything in it; images paged by keyset."""

from __future__ import annotations

from datetime import datetime

from helpers import create_session, files_under, search, upload

from faceserve.vision import openvino_runtime


async def test_create_list_show(client):
    response = await client.post("/api/face/sessions", json={"name": "  Wedding 2026 "})
    assert response.status == 201
    created = (await response.json())["data"]
    assert created["name"] == "Wedding 2026"
    assert datetime.fromisoformat(created["created_at"]).tzinfo is not None
    await create_session(client, "second")
    listed = (await (await client.get("/api/face/sessions")).json())["data"]["sessions"]
    assert [s["name"] for s in listed] == ["Wedding 2026", "second"]
    shown = (await (await client.get(f"/api/face/sessions/{created['id']}")).json())["data"]
    assert shown == {**created, "image_count": 0, "face_count": 0}


async def test_bad_session_input(client):
    for body in ({}, {"name": ""}, {"name": 5}, {"name": "x" * 201}, []):
        response = await client.post("/api/face/sessions", json=body)
        assert response.status == 400, body
    response = await client.post("/api/face/sessions", data=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert (await client.get("/api/face/sessions/999")).status == 404
    assert (await client.get("/api/face/sessions/x")).status == 404
    assert (await client.delete("/api/face/sessions/999")).status == 404


async def test_delete_session_removes_images_faces_files_and_index(client, photos, services, settings):
    keep = await create_session(client, "keep")
    gone = await create_session(client, "gone")
    await upload(client, keep, ("gdp.jpg", photos["gdp"].read_bytes()))
    [t1] = await upload(client, gone, ("t1.jpg", photos["t1"].read_bytes()))
    status, _ = await search(client, gone, photos["t1"].read_bytes())
    assert status == 200 and services.indexes.is_loaded(gone)

    response = await client.delete(f"/api/face/sessions/{gone}")
    assert response.status == 200
    assert (await client.get(f"/api/face/sessions/{gone}")).status == 404
    assert (await client.get(f"/api/face/image/{t1['image_id']}")).status == 404
    assert not services.indexes.is_loaded(gone)
    assert all(p.startswith(f"face_sessions/{keep}/") for p in files_under(settings.storage) if p != "admin-key")
    async with services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM faces WHERE face_session_id = $1", gone) == 0
        assert await conn.fetchval("SELECT count(*) FROM faces WHERE face_session_id = $1", keep) > 0
    status, _ = await search(client, gone, photos["t1"].read_bytes())
    assert status == 404


async def test_images_are_paged_by_keyset(client, photos):
    session_id = await create_session(client)
    uploaded = await upload(
        client,
        session_id,
        ("a.jpg", photos["gdp"].read_bytes()),
        ("b.jpg", photos["yaoming"].read_bytes()),
        ("c.jpg", photos["t1"].read_bytes()),
    )
    seen, after = [], 0
    while True:
        response = await client.get(f"/api/face/sessions/{session_id}/images", params={"limit": 2, "after": after})
        data = (await response.json())["data"]
        seen += [i["image_id"] for i in data["images"]]
        if data["next_after"] is None:
            break
        after = data["next_after"]
    assert seen == [i["image_id"] for i in uploaded]
    response = await client.get(f"/api/face/sessions/{session_id}/images", params={"limit": "0"})
    assert response.status == 400


async def test_healthz(client):
    response = await client.get("/healthz")
    assert response.status == 200
    data = (await response.json())["data"]
    assert data["database"] == "ok" and data["models"] == "buffalo_s"
    # auto: OpenVINO where installed (no CUDA here), its device as the provider
    engine = "openvino" if openvino_runtime.installed() else "onnxruntime"
    assert data["engine"] == engine
    assert (data["providers"] == ["CPU"]) if engine == "openvino" else ("CPUExecutionProvider" in data["providers"])
    assert set(data["precision"]) == {"detector", "recogniser"}
