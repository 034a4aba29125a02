"""Where a face session's things live under the storage root, and the identity string that names a photo.

    {storage}/face_sessions/{session_id}/db/{stored_name}      the photos (a row's file_path, relative)
    {storage}/face_sessions/{session_id}/derived/...           resized copies and face crops
    {storage}/face_sessions/{session_id}/index/...             the saved face index

A photo's identity is its path below face_sessions/ ("{session_id}/db/{stored_name}"): the contract's
`identity`, the path old app builds asked for under /storage/, and the key of `resolve`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from .inputs import parse_id

SESSIONS_DIR = "face_sessions"
PHOTOS_DIR = "db"
DERIVED_DIR = "derived"
INDEX_DIR = "index"


def identity(session_id: int, stored_name: str) -> str:
    return f"{int(session_id)}/{PHOTOS_DIR}/{stored_name}"


def file_path(session_id: int, stored_name: str) -> str:
    """A row's file_path: the photo's path relative to the storage root."""
    return f"{SESSIONS_DIR}/{identity(session_id, stored_name)}"


def parse_identity(text: str) -> tuple[int, str] | None:
    """'1/db/name.jpg' (also with a leading face_sessions/ or /storage/face_sessions/) -> (1, 'name.jpg'); the
    session id read by the one id parser (inputs.parse_id), as the access guard reads ids."""
    parts = text.strip("/").split("/")
    if parts[:2] == ["storage", SESSIONS_DIR]:
        parts = parts[2:]
    elif parts[:1] == [SESSIONS_DIR]:
        parts = parts[1:]
    session_id = parse_id(parts[0]) if len(parts) == 3 else None
    if session_id is None or parts[1] != PHOTOS_DIR or not parts[2]:
        return None
    return session_id, parts[2]


@dataclass(frozen=True)
class SessionLayout:
    """The folders of every session under one storage root."""

    root: Path

    @functools.cached_property  # on every request's path (a hand-off's): made once
    def sessions_root(self) -> Path:
        return self.root / SESSIONS_DIR

    def session_dir(self, session_id: int) -> Path:
        return self.sessions_root / str(int(session_id))

    def photos_dir(self, session_id: int) -> Path:
        return self.session_dir(session_id) / PHOTOS_DIR

    def derived_dir(self, session_id: int) -> Path:
        return self.session_dir(session_id) / DERIVED_DIR

    def index_dir(self, session_id: int) -> Path:
        return self.session_dir(session_id) / INDEX_DIR

    def sessions_with(self, pattern: str) -> list[tuple[int, Path]]:
        """(session id, path) for each match of pattern inside a session folder, e.g. 'index/meta.json'."""
        found = []
        for path in self.sessions_root.glob(f"*/{pattern}"):
            folder = path.relative_to(self.sessions_root).parts[0]
            if folder.isascii() and folder.isdigit():
                found.append((int(folder), path))
        return sorted(found)
