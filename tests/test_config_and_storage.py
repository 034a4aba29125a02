"""Settings from environment and flags; safe stored names."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from faceserve.config import MAXIMUM, MINIMUM, Settings, SettingsError, load_settings
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
    ("env", "message"),
    [
        ({"FACESERVE_DEVICE": "gpu"}, "FACESERVE_DEVICE must be one of auto, cpu, cuda"),
        ({"FACESERVE_EVENT_LOOP": "trio"}, "FACESERVE_EVENT_LOOP must be one of asyncio, uvloop"),
        ({"FACESERVE_PORT": "eighty"}, "FACESERVE_PORT must be an integer"),
        ({"FACESERVE_PORT": "70000"}, "FACESERVE_PORT must be at most 65535"),
        ({"FACESERVE_WORKERS": "0"}, "FACESERVE_WORKERS must be at least 1"),
        ({"FACESERVE_MATCH_THRESHOLD": "close"}, "FACESERVE_MATCH_THRESHOLD must be a number"),
        ({"FACESERVE_INDEX_PRELOAD": "maybe"}, "FACESERVE_INDEX_PRELOAD must be one of 1, true"),
        ({"FACESERVE_DERIVATIVE_SIZES": "64,big"}, "FACESERVE_DERIVATIVE_SIZES must be integers"),
        ({"FACESERVE_DB_POOL_MIN": "5", "FACESERVE_DB_POOL_MAX": "2"}, "FACESERVE_DB_POOL_MIN must not exceed"),
        # once accepted: renders then waited for ever, and every search was refused
        ({"FACESERVE_MAX_CONCURRENT_RENDERS": "0"}, "FACESERVE_MAX_CONCURRENT_RENDERS must be at least 1"),
        ({"FACESERVE_MAX_PENDING_SEARCHES": "0"}, "FACESERVE_MAX_PENDING_SEARCHES must be at least 1"),
        ({"FACESERVE_DERIVATIVE_QUALITY": "101"}, "FACESERVE_DERIVATIVE_QUALITY must be at most 100"),
        ({"FACESERVE_PEOPLE_LINK_SIMILARITY": "1.5"}, "FACESERVE_PEOPLE_LINK_SIMILARITY must be at most 1"),
    ],
)
def test_a_value_the_service_cannot_use_is_refused_with_the_settings_name(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


def test_every_number_a_setting_holds_has_a_floor():
    numeric = {f.name for f in fields(Settings) if str(f.type).split(" ")[0] in ("int", "float")}
    assert numeric - set(MINIMUM) == set(), "give these settings a floor in config.py MINIMUM"
    assert set(MAXIMUM) <= numeric
    defaults = Settings()
    assert all(getattr(defaults, name) >= low for name, low in MINIMUM.items())


def test_booleans_take_the_usual_words():
    assert load_settings(env={"FACESERVE_INDEX_PRELOAD": "off"}).index_preload is False
    assert load_settings(env={"FACESERVE_GPU_FLOAT16": "Yes"}).gpu_float16 is True


def test_settings_of_the_ivf_era_are_read_under_their_new_names_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        settings = load_settings(env={"FACESERVE_IVF_MIN_FACES": "1234", "FACESERVE_IVF_NPROBE_MARGIN": "3"})
    assert settings.approximate_min_faces == 1234 and settings.shortlist_margin == 3
    assert "FACESERVE_IVF_MIN_FACES is deprecated: set FACESERVE_APPROXIMATE_MIN_FACES" in caplog.text
    # the new name wins when both are set
    both = {"FACESERVE_IVF_MIN_FACES": "1234", "FACESERVE_APPROXIMATE_MIN_FACES": "99"}
    assert load_settings(env=both).approximate_min_faces == 99
    assert Settings().approximate_min_faces == 50_000


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
