"""Saved indexes for a fast cold start: face_sessions/{id}/index/, one self-contained data file per kind
(exact.npz: ids and embedding matrix; ivf.faiss: the FAISS index, ids inside) and meta.json naming which.

A saved index is only a cache of the database: it is used when the face count and max face id read from
the data file itself equal the database's (face ids only grow, so any add or delete since the save changes
one of them), else rebuilt. Each file is written under a temporary name and renamed, so several workers
saving at once can interleave without ever pairing one's ids with another's vectors. FAISS thread only.
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
            data = f"{index.kind}.faiss"
            faiss.write_index(index.index, str(folder / f"{data}{suffix}"))
        else:  # exact, on CPU or GPU: the matrix itself
            data = "exact.npz"
            ids, vectors = index.export()
            with open(folder / f"{data}{suffix}", "wb") as out:  # np.savez(path) would append ".npz"
                np.savez(out, ids=ids, vectors=vectors)
        os.replace(folder / f"{data}{suffix}", folder / data)
        meta = {"format": _FORMAT, "model_pack": self._model_pack, "data": data}
        (folder / f"meta.json{suffix}").write_text(json.dumps(meta))
        os.replace(folder / f"meta.json{suffix}", folder / "meta.json")

    def load(self, session_id: int, count: int, max_id: int) -> IdIndex | ExactIndex | None:
        """The saved index if it holds exactly the database's (count, max id), else None."""
        folder = self.folder(session_id)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if (meta.get("format"), meta.get("model_pack")) != (_FORMAT, self._model_pack):
                return None
            if meta["data"] == "exact.npz":
                with np.load(folder / "exact.npz", allow_pickle=False) as saved:
                    ids = saved["ids"]
                    if not _current(ids, count, max_id):
                        return None
                    return ExactIndex(ids, saved["vectors"])
            index = IdIndex(faiss.read_index(str(folder / meta["data"])), "ivf", np.empty(0, np.int64))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.info("no usable saved index for session %d: %s", session_id, exc)
            return None
        ids = index.ids()
        return IdIndex(index.index, "ivf", ids) if _current(ids, count, max_id) else None


def _current(ids: np.ndarray, count: int, max_id: int) -> bool:
    return len(ids) == count and (int(ids.max()) if len(ids) else 0) == max_id
