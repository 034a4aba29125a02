"""`faceserve import s3://bucket/prefix`: an old face_sessions/{id}/db/ tree kept as objects (SeaweedFS on
loopback, tests/seaweed.py), taken in through the same ingest as a folder's files; a run cut short and run
again reads only what is missing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from dataclasses import replace

import pytest
import seaweed
from helpers import files_under, objects_of

from faceserve import db
from faceserve.cli import main as cli_main
from faceserve.core.importer import NoSessionsFound, SourceFile, Tree, bucket_tree, import_tree, open_bucket
from faceserve.core.services import open_services
from faceserve.layout import SessionLayout


@pytest.fixture
def image_store() -> str:
    return "s3"  # the photos go to the same bucket, under the test's own prefix


async def _put_tree(settings, prefix: str, photos) -> dict[str, bytes]:
    """The old system's tree as objects under prefix/face_sessions/, and some keys that are no photo of it."""
    tree = {
        "face_sessions/3/db/party_001.jpg": photos["t1"].read_bytes(),
        "face_sessions/3/db/party 002.JPG": photos["gdp"].read_bytes(),
        "face_sessions/3/db/copy_of_001.jpg": photos["t1"].read_bytes(),  # same bytes as party_001
        "face_sessions/3/db/notes.txt": b"not a photo",
        "face_sessions/8/db/yao.jpg": photos["yaoming"].read_bytes(),
    }
    ignored = {
        "face_sessions/3/db/.hidden.jpg": photos["t1"].read_bytes(),
        "face_sessions/3/db/thumbs/small.jpg": photos["t1"].read_bytes(),  # deeper than db/: not the layout
        "face_sessions/not-a-session/db/x.jpg": photos["t1"].read_bytes(),
        "elsewhere.jpg": photos["t1"].read_bytes(),
    }
    async with open_bucket(settings, f"s3://{seaweed.BUCKET}/{prefix}") as source:
        for key, data in {**tree, **ignored}.items():
            await source._client.put_object(Bucket=source.bucket, Key=source.key(key), Body=data)
    return tree


async def test_import_from_a_bucket_prefix_twice_changes_nothing_the_second_time(settings, engine, photos):
    prefix = f"old/{secrets.token_hex(6)}/wedding"
    tree = await _put_tree(settings, prefix, photos)
    url = f"s3://{seaweed.BUCKET}/{prefix}"
    async with open_services(settings, engine) as services, open_bucket(settings, url) as source:
        listed = await bucket_tree(source, url)
        assert [(session_id, [f.name for f in files]) for session_id, files in listed.sessions] == [
            (3, ["copy_of_001.jpg", "notes.txt", "party 002.JPG", "party_001.jpg"]),
            (8, ["yao.jpg"]),
        ]
        first = await import_tree(services, listed)
        assert (first.sessions_created, first.images_created, first.duplicates, first.already_present) == (2, 3, 1, 0)
        assert [label for label, _ in first.failed] == ["3/db/notes.txt"]
        sessions = await services.pool.fetch("SELECT id, name FROM face_sessions ORDER BY id")
        assert [tuple(r) for r in sessions] == [(3, "wedding 3"), (8, "wedding 8")]
        image = await db.find_image_by_path(services.pool, "face_sessions/3/db/party 002.JPG")
        assert image is not None and image.face_count == 5 and image.bytes_in == "s3"
        # the bytes went to the service's own store under the same names, checked against the source's hash
        assert await objects_of(services) == [
            "face_sessions/3/db/copy_of_001.jpg",
            "face_sessions/3/db/party 002.JPG",
            "face_sessions/8/db/yao.jpg",
        ]
        for path in await objects_of(services):
            kept = await services.stores.objects.read(path)
            assert kept is not None and hashlib.sha256(kept).digest() == hashlib.sha256(tree[path]).digest()
        # streamed through a .part file like an upload, none of it left on this node's disk
        assert files_under(SessionLayout(settings.storage).sessions_root) == []
        rows = await services.pool.fetch("SELECT id, file_path, sha256 FROM face_session_images ORDER BY id")

        second = await import_tree(services, await bucket_tree(source, url))
        assert (second.sessions_created, second.images_created, second.duplicates) == (0, 0, 0)
        assert second.already_present == 4 and len(second.failed) == 1  # notes.txt fails again: it is read again
        assert await services.pool.fetch("SELECT id, file_path, sha256 FROM face_session_images ORDER BY id") == rows


class _Interrupted(Exception):
    pass


async def test_an_import_cut_short_resumes_reading_only_what_is_missing(settings, engine, photos):
    """Killed after two photos: the next run skips what is recorded by its name without reading its object
    (the sha256 dedupe covers what has another name), and takes in the rest."""
    prefix = f"old/{secrets.token_hex(6)}"
    await _put_tree(settings, prefix, photos)
    url = f"s3://{seaweed.BUCKET}/{prefix}"
    read: list[str] = []

    def counted(tree: Tree) -> Tree:
        def reader(file: SourceFile):
            def read_it():
                read.append(file.name)
                return file.read()

            return read_it

        return replace(tree, sessions=[(s, [replace(f, read=reader(f)) for f in files]) for s, files in tree.sessions])

    def stop_after_two(report, label, outcome):
        if report.images_created == 2:
            raise _Interrupted

    async with open_services(settings, engine) as services, open_bucket(settings, url) as source:
        with pytest.raises(_Interrupted):
            await import_tree(services, counted(await bucket_tree(source, url)), stop_after_two)
        done = {r["file_path"] for r in await services.pool.fetch("SELECT file_path FROM face_session_images")}
        assert done == {"face_sessions/3/db/copy_of_001.jpg", "face_sessions/3/db/party 002.JPG"}
        # what was read ahead and not recorded was dropped: no .part file, no object without a row
        assert files_under(SessionLayout(settings.storage).sessions_root) == []
        assert await objects_of(services) == sorted(done)

        read.clear()
        report = await import_tree(services, counted(await bucket_tree(source, url)))
        assert sorted(read) == ["notes.txt", "party_001.jpg", "yao.jpg"]
        assert (report.images_created, report.already_present, report.duplicates, len(report.failed)) == (1, 2, 1, 1)
        assert len(await objects_of(services)) == 3


async def test_the_cli_imports_from_a_bucket_and_names_a_wrong_address_in_one_line(settings, photos, capsys):
    prefix = f"old/{secrets.token_hex(6)}"
    await _put_tree(settings, prefix, photos)
    env = {
        "DATABASE_URL": settings.database_url,
        "FACESERVE_MODELS_DIR": str(settings.models_dir),
        "FACESERVE_IMAGE_STORE": "s3",
        "FACESERVE_S3_ENDPOINT": settings.s3_endpoint,
        "FACESERVE_S3_BUCKET": seaweed.BUCKET,
        "FACESERVE_S3_PREFIX": settings.s3_prefix,
    }
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    storage = ["--storage", str(settings.storage)]
    try:
        argv = ["import", f"s3://{seaweed.BUCKET}/{prefix}/face_sessions", *storage]  # face_sessions itself
        assert await asyncio.to_thread(cli_main, argv) == 1  # notes.txt failed
        out = capsys.readouterr()
        assert "images imported: 3, duplicates: 1, already present: 0, failed: 1" in out.out
        assert "3/db/party_001.jpg: duplicate" in out.err
        assert await asyncio.to_thread(cli_main, argv) == 1
        assert "images imported: 0, duplicates: 0, already present: 4, failed: 1" in capsys.readouterr().out

        for wrong, says in (
            (f"s3://{seaweed.BUCKET}/{prefix}/nothing-here", "has no face_sessions/"),
            ("s3:///no-bucket", "names no bucket"),
            ("s3://no-such-bucket-here/x", "there is no bucket no-such-bucket-here at http://127.0.0.1"),
        ):
            code = await asyncio.to_thread(cli_main, ["import", wrong, *storage])
            err = capsys.readouterr().err
            [error] = [line for line in err.splitlines() if line.startswith("faceserve: error:")]  # no traceback
            assert code in (1, 2) and says in error and "Traceback" not in err, err
            assert seaweed.SECRET_KEY not in err
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def test_a_prefix_without_the_layout_is_refused_before_anything_starts(settings):
    url = f"s3://{seaweed.BUCKET}/empty/{secrets.token_hex(6)}"
    async with open_bucket(settings, url) as source:
        with pytest.raises(NoSessionsFound):
            await bucket_tree(source, url)
