"""Settings from environment and flags; safe stored names."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceserve.config import load_settings
from faceserve.media.files import is_plain_name, safe_stem, stored_name_for


def test_environment_then_overrides():
    env = {
        "FACESERVE_PORT": "9000",
        "FACESERVE_MATCH_THRESHOLD": "0.5",
        "FACESERVE_STORAGE": "/tmp/elsewhere",
        "DATABASE_URL": "postgresql://u@h/db",
        "FACESERVE_PUBLIC_BASE_URL": "https://cdn.example",
    }
    settings = load_settings({"port": 7000, "host": None}, env=env)
    assert settings.port == 7000 and settings.host == "0.0.0.0"
    assert settings.match_threshold == 0.5
    assert settings.storage == Path("/tmp/elsewhere")
    assert settings.database_url == "postgresql://u@h/db"
    assert settings.public_base_url == "https://cdn.example"
    assert load_settings(env={}).database_url is None
    assert load_settings(env={}).storage.is_absolute()


@pytest.mark.parametrize(
    ("original", "stem"),
    [
        ("holiday.jpg", "holiday"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\IMG 001.jpeg", "IMG_001"),
        ("...", "image"),
        (".hidden.jpg", "hidden"),
        ("a..b....c.jpg", "a.b.c"),
        ("ünï 照片.png", "uni"),
        ("x" * 500 + ".jpg", "x" * 60),
        ("", "image"),
    ],
)
def test_safe_stem(original, stem):
    assert safe_stem(original) == stem


def test_stored_name_is_hash_prefixed_and_has_the_real_extension():
    assert stored_name_for("../evil.php", "ab" * 32, "jpg") == "abababababababab_evil.jpg"


@pytest.mark.parametrize(
    ("name", "plain"),
    [("IMG_1.jpg", True), ("party 002.JPG", True), (".hidden", False), ("a/b", False), ("x\x00", False)],
)
def test_plain_names(name, plain):
    assert is_plain_name(name) is plain


def test_conflicting_cpu_and_gpu_builds_are_reported():
    from faceserve.runtime import conflicting_builds

    assert conflicting_builds(["onnxruntime", "faiss-cpu", "numpy"]) == []
    assert conflicting_builds(["onnxruntime-gpu", "faiss-gpu-cu12"]) == []
    problems = conflicting_builds(["onnxruntime", "onnxruntime-gpu", "faiss-cpu"])
    assert len(problems) == 1 and "onnxruntime-gpu" in problems[0]
    assert conflicting_builds() == []  # this CPU install holds one build of each
