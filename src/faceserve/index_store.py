"""Saved indexes for a fast cold start: face_sessions/{id}/index/{index.faiss, ids.npy, meta.json}
(index.faiss holds a FAISS index, or for exact indexes the embedding matrix as .npy).

A saved index is only a cache of the database: it is used when its face count and max face id equal the
database's (face ids only grow, so any add or delete since the save changes one of them), else rebuilt.
Files are written to temporary names and renamed, meta.json last, so a crash mid-save leaves a set that
fails the check. Blocking: FAISS thread only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import faiss
import numpy as np

from .index_kinds import ExactIndex, IdIndex, TombstoneFlatIndex

log = logging.getLogger(__name__)
_FORMAT = 1


class IndexStore:
    def __init__(self, sessions_root: Path, model_pack: str) -> None:
        self._root = sessions_root
        self._model_pack = model_pack

    def folder(self, session_id: int) -> Path:
        return self._root / str(int(session_id)) / "index"

    def save(self, session_id: int, index: IdIndex | ExactIndex | TombstoneFlatIndex) -> None:
        folder = self.folder(session_id)
        folder.mkdir(parents=True, exist_ok=True)
        suffix = f".{os.getpid()}.tmp"
        if isinstance(index, IdIndex):
            kind, ids = index.kind, index.ids()
            faiss.write_index(index.index, str(folder / f"index.faiss{suffix}"))
        else:  # exact on CPU or GPU: the matrix itself
            kind = "flat"
            ids, vectors = index.export()
            with open(folder / f"index.faiss{suffix}", "wb") as out:  # np.save(path) would append ".npy"
                np.save(out, vectors, allow_pickle=False)
        with open(folder / f"ids.npy{suffix}", "wb") as out:
            np.save(out, ids, allow_pickle=False)
        meta = {
            "format": _FORMAT,
            "model_pack": self._model_pack,
            "kind": kind,
            "count": len(ids),
            "max_id": int(ids.max()) if len(ids) else 0,
        }
        (folder / f"meta.json{suffix}").write_text(json.dumps(meta))
        for name in ("index.faiss", "ids.npy", "meta.json"):
            os.replace(folder / f"{name}{suffix}", folder / name)

    def load(self, session_id: int, count: int, max_id: int) -> IdIndex | ExactIndex | None:
        """The saved index if it matches the database's (count, max id), else None."""
        folder = self.folder(session_id)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if (meta.get("format"), meta.get("model_pack"), meta.get("count"), meta.get("max_id")) != (
                _FORMAT,
                self._model_pack,
                count,
                max_id,
            ):
                return None
            ids = np.load(folder / "ids.npy", allow_pickle=False)
            if len(ids) != count:
                return None
            if meta["kind"] == "flat":
                vectors = np.load(folder / "index.faiss", allow_pickle=False)
                return ExactIndex(ids, vectors) if len(vectors) == count else None
            index = faiss.read_index(str(folder / "index.faiss"))
        except (OSError, ValueError, RuntimeError) as exc:
            log.info("no usable saved index for session %d: %s", session_id, exc)
            return None
        return IdIndex(index, meta["kind"], ids) if index.ntotal == count else None
