"""Saved indexes for a fast cold start, in face_sessions/{id}/index/: meta.json names the data files of
the last save, which carry that save's token in their names (exact: {token}.ids.npy + {token}.vectors.npy,
read back at memory speed; pq-rerank: {token}.faiss, ids inside).

A saved index is only a cache of the database: it is used when the face count and max face id read from
the data itself equal the database's (face ids only grow, so any add or delete since the save changes one
of them), else rebuilt. Each writer writes files of its own token and then swaps meta.json, so several
workers saving at once never pair one's ids with another's vectors. FAISS threads only (index/registry.py).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

import faiss
import numpy as np

from ..layout import INDEX_DIR, SessionLayout
from .cupy_flat import CupyFlatIndex
from .kinds import ExactIndex, PqRerankIndex, TombstoneFlatIndex

log = logging.getLogger(__name__)
_FORMAT = 2


class IndexStore:
    def __init__(self, layout: SessionLayout, model_pack: str) -> None:
        self._layout = layout
        self._model_pack = model_pack

    def folder(self, session_id: int) -> Path:
        return self._layout.index_dir(session_id)

    def saved_sessions(self) -> list[int]:
        """Ids of the sessions with a saved index (current or not)."""
        return [session_id for session_id, _ in self._layout.sessions_with(f"{INDEX_DIR}/meta.json")]

    def save(self, session_id: int, index: PqRerankIndex | ExactIndex | TombstoneFlatIndex | CupyFlatIndex) -> None:
        folder = self.folder(session_id)
        folder.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(6)
        if isinstance(index, PqRerankIndex):
            files = {"faiss": f"{token}.faiss"}
            faiss.write_index(index.index, str(folder / files["faiss"]))
        else:  # exact, on CPU or GPU: the matrix itself
            files = {"ids": f"{token}.ids.npy", "vectors": f"{token}.vectors.npy"}
            ids, vectors = index.export()
            np.save(folder / files["ids"], ids, allow_pickle=False)
            np.save(folder / files["vectors"], vectors, allow_pickle=False)
        meta = {"format": _FORMAT, "model_pack": self._model_pack, "files": files}
        (folder / f"meta.json.{token}").write_text(json.dumps(meta))
        os.replace(folder / f"meta.json.{token}", folder / "meta.json")
        for old in folder.iterdir():  # earlier saves; a reader still on one of them just rebuilds
            if old.name != "meta.json" and not old.name.startswith(token):
                old.unlink(missing_ok=True)

    def load(self, session_id: int, count: int, max_id: int) -> PqRerankIndex | ExactIndex | None:
        """The saved index if it holds exactly the database's (count, max id), else None."""
        folder = self.folder(session_id)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if (meta.get("format"), meta.get("model_pack")) != (_FORMAT, self._model_pack):
                return None
            files = meta["files"]
            if "vectors" in files:
                ids = np.load(folder / files["ids"], allow_pickle=False)
                if not _current(ids, count, max_id):
                    return None
                return ExactIndex(ids, np.load(folder / files["vectors"], mmap_mode="r"))
            index = faiss.read_index(str(folder / files["faiss"]))
        except FileNotFoundError:
            return None  # never saved (a new session, or one below the size worth saving): built from the database
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.info("no usable saved index for session %d: %s", session_id, exc)
            return None
        if not isinstance(index, faiss.IndexIDMap):  # not a pq-rerank save: rebuilt from the database
            return None
        ids = PqRerankIndex(index, np.empty(0, np.int64)).ids()
        return PqRerankIndex(index, ids) if _current(ids, count, max_id) else None


def _current(ids: np.ndarray, count: int, max_id: int) -> bool:
    return len(ids) == count and (int(ids.max()) if len(ids) else 0) == max_id
