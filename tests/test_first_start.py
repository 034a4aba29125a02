"""A real `faceserve serve` started on a fresh storage: its log names the page and its console the one-time
setup link, which signs a browser in once; Ctrl-C (SIGINT) stops it with exit status 130."""

from __future__ import annotations

import json
import re
import shutil
import signal
import urllib.error
import urllib.request

from service_process import Service, shared_temp_dir


def _exchange(base: str, token: str) -> int:
    request = urllib.request.Request(
        f"{base}/api/face/setup",
        data=json.dumps({"token": token}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_first_start_prints_the_page_and_a_setup_link_and_sigint_exits_130(models_dir):
    folder = shared_temp_dir()
    service = Service(folder / "storage", models_dir, env={"FACESERVE_AUTH": "on"})
    try:
        service.start()
        log = service.log_text()
        assert f"the page at http://127.0.0.1:{service.port}/" in log, log
        token = re.search(rf"http://127\.0\.0\.1:{service.port}/#setup=(fst_[A-Za-z0-9_-]+)", log)[1]
        assert _exchange(service.base, token) == 201
        assert _exchange(service.base, token) == 403  # once only
        assert service.process is not None
        service.process.send_signal(signal.SIGINT)
        assert service.process.wait(30) == 130, service.log_text()
    finally:
        if service.process is not None and service.process.poll() is None:
            service.stop()
        shutil.rmtree(folder, ignore_errors=True)
