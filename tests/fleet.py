"""A faceserve fleet on loopback for tests and benchmarks: `faceserve serve` nodes as subprocesses on one
Postgres database and one shared storage folder, and nginx from deploy/nginx.conf in front of them.

Synchronous on purpose (subprocess and urllib): fixtures of any scope and benchmark scripts can use it.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from helpers import free_port, nginx_binary

from faceserve.vision.packs import locate_pack

ROOT = Path(__file__).resolve().parents[1]
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"
ACCEL_PREFIX = "/_faceserve_files/"
_READY_TIMEOUT_S = 240.0
_STOP_TIMEOUT_S = 20.0


def render_nginx_conf(values: dict[str, str], template: str | None = None) -> str:
    """deploy/nginx.conf with each {{NAME}} replaced; every placeholder must be given."""
    text = NGINX_TEMPLATE.read_text() if template is None else template
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    left = sorted(set(re.findall(r"\{\{[A-Z_]+\}\}", text)))
    if left:
        raise ValueError(f"placeholders left in nginx.conf: {', '.join(left)}")
    return text


def _get_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@dataclass
class Node:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@dataclass
class Fleet:
    database_url: str
    storage: Path
    models_dir: Path
    run_dir: Path
    node_env: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    nginx: subprocess.Popen | None = None
    nginx_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    @property
    def files_socket(self) -> Path:
        """The file tier's socket: requests through it are answered with X-Accel-Redirect, never cached."""
        return self.run_dir / "files.sock"

    def start_node(self, name: str, port: int | None = None, storage: Path | None = None) -> Node:
        """storage: the node's own folder instead of the shared one (a fleet whose photos are in S3)."""
        port = port or free_port()
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "FACESERVE_ACCEL_REDIRECT": ACCEL_PREFIX,
            "FACESERVE_PARTIAL_UPLOAD_MIN_IDLE_S": "3600",
            "FACESERVE_INFERENCE_THREADS": "1",
            "FACESERVE_DB_POOL_MAX": "4",
            # tests of the fleet's routing and serving, not of access: keys and signatures off (loopback)
            "FACESERVE_AUTH": "off",
            # every client is nginx's one address, and the load tests search thousands of times in seconds:
            # the search budget (60 a minute per address) would answer 429 (test_ratelimit.py tests budgets)
            "FACESERVE_RATE_LIMIT_SEARCH": "100000/60",
            **self.node_env,
        }
        log_path = self.run_dir / f"node-{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "faceserve",
                    "--log-level",
                    "WARNING",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--storage",
                    str(storage or self.storage),
                    "--models-dir",
                    str(self.models_dir),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        node = Node(name, port, process, log_path)
        self.nodes[name] = node
        return node

    def start_behind_nginx(self, *names: str) -> None:
        """Start these nodes, wait until each is ready, and put nginx in front of them."""
        for name in names:
            self.start_node(name)
        self.wait_ready(*names)
        self.start_nginx(list(names))

    def wait_ready(self, *names: str) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        for name in names:
            node = self.nodes[name]
            while _get_status(node.url + "/healthz") != 200:
                if node.process.poll() is not None:
                    raise RuntimeError(
                        f"node {name} exited with {node.process.returncode}:\n{node.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"node {name} not ready within {_READY_TIMEOUT_S} s:\n{node.log_tail()}"
                    )
                time.sleep(0.2)

    def kill(self, name: str) -> None:
        """kill -9: no shutdown at all, as a crash or a power cut."""
        node = self.nodes[name]
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()

    def stop_node(self, name: str) -> None:
        node = self.nodes.pop(name)
        if node.process.poll() is None:
            node.process.terminate()
            try:
                node.process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()

    def start_nginx(self, node_names: list[str], template: str | None = None) -> None:
        """nginx from deploy/nginx.conf (or template, a changed copy of it) in front of these nodes."""
        self.nginx_port = free_port()
        servers = "\n        ".join(
            f"server 127.0.0.1:{self.nodes[n].port} max_fails=1 fail_timeout=10s;" for n in node_names
        )
        values = {
            # as root, nginx workers would drop to `nobody`, who cannot read the test's storage or cache
            "USER": "user root;" if os.geteuid() == 0 else "",
            "RUN_DIR": str(self.run_dir),
            "CACHE_DIR": str(self.run_dir / "cache"),
            "LISTEN": f"127.0.0.1:{self.nginx_port}",
            "NODES": servers,
            "STORAGE": str(self.storage),
            "API_RATE": "100000r/s",
            "IMAGE_RATE": "100000r/s",
            # photos in S3: the store the nodes use (FACESERVE_S3_ENDPOINT); else a location never reached
            "S3_SCHEME": urlsplit(self.node_env.get("FACESERVE_S3_ENDPOINT", "http://127.0.0.1:9")).scheme,
            "S3_HOST": urlsplit(self.node_env.get("FACESERVE_S3_ENDPOINT", "http://127.0.0.1:9")).netloc,
        }
        conf = self.run_dir / "nginx.conf"
        conf.write_text(render_nginx_conf(values, template))
        self.nginx = subprocess.Popen(
            [nginx_binary(), "-p", str(self.run_dir), "-c", str(conf), "-g", "daemon off;"],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while _get_status(self.url + "/healthz") is None:
            if self.nginx.poll() is not None:
                raise RuntimeError(
                    f"nginx exited: {self.nginx.stderr.read().decode() if self.nginx.stderr else ''}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not answer within 10 s")
            time.sleep(0.05)

    def stop_nginx(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.nginx.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
                self.nginx.wait()
        self.nginx = None

    def close(self) -> None:
        self.stop_nginx()
        for name in list(self.nodes):
            self.stop_node(name)

    def nginx_error_log(self) -> str:
        path = self.run_dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def database_named(uri: str, name: str) -> str:
    """The server of uri, database name."""
    return urlunsplit(urlsplit(uri)._replace(path="/" + name))


async def _create_database(uri: str, name: str) -> None:
    admin = await asyncpg.connect(uri)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def _drop_database(uri: str, name: str) -> None:
    admin = await asyncpg.connect(uri)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextmanager
def fleet_of_its_own(postgres_uri: str, models_dir: Path, root: Path, kind: str, **node_env: str) -> Iterator[Fleet]:
    """A fleet on a database of its own on the server of postgres_uri (made here, named faceserve_{kind}_...,
    dropped after with everything in it), its shared storage and nginx's run folder under root, the model
    pack laid out once (before two nodes race to do it). The caller starts its nodes; all stop after."""
    name = f"faceserve_{kind}_{secrets.token_hex(4)}"
    asyncio.run(_create_database(postgres_uri, name))
    locate_pack(models_dir, "buffalo_s")
    run_dir = root / "nginx"
    run_dir.mkdir(exist_ok=True)
    fleet = Fleet(database_named(postgres_uri, name), root / "shared-storage", models_dir, run_dir, dict(node_env))
    try:
        yield fleet
    finally:
        fleet.close()
        asyncio.run(_drop_database(postgres_uri, name))
