"""People of a session: full clusterings written to Postgres, new faces joining people at once, and an
organiser's merges and splits, which no later clustering undoes.

A full clustering (index/clustering.py) runs on the session's index: the k nearest neighbours of every face
come from the same FAISS index searches use (batched on its owner thread, so searches keep being answered),
never from all pairs. It runs in the background once enough faces changed, one process at a time across
workers and nodes (a Postgres advisory lock), or by hand (`faceserve people --session ID --recluster`).
Between clusterings a new face joins the person its nearest neighbours belong to when they are close enough
on average; a face with no such person waits for the next clustering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .. import db
from ..config import Settings
from ..errors import BadRequest, PersonNotFound
from ..index.clustering import (
    ROW,
    ClusterParams,
    RowsOfIds,
    cell_knn_graph,
    clarity,
    cluster,
    eligible,
    neighbour_lists,
)
from ..vision import quality
from ..vision.engine import DetectedFace
from . import face_sessions
from .services import Services

log = logging.getLogger(__name__)

# (stage, done, total): what a long clustering reports as it goes
Progress = Callable[[str, int, int], None]


def cluster_params(settings: Settings) -> ClusterParams:
    return ClusterParams(
        neighbours=settings.people_neighbours,
        link_similarity=settings.people_link_similarity,
        min_faces=settings.people_min_faces,
        min_face_size=float(settings.people_min_face_size),
        min_det_score=settings.people_min_det_score,
    )


def _quiet(*_: object) -> None:
    """Progress nobody watches."""


@dataclass(frozen=True)
class ClusteringReport:
    faces: int
    people: int
    placed_faces: int  # faces in a person after it (an organiser's included)
    seconds: float


async def recluster(services: Services, session_id: int, progress: Progress | None = None) -> ClusteringReport | None:
    """Cluster the whole session again; None when another process is clustering it right now."""
    await face_sessions.require_session(services, session_id)
    async with services.pool.acquire() as lock_conn:
        try:
            locked = await db.try_lock_clustering(lock_conn, session_id)
        except BaseException:
            # cancelled while asking: the server may have granted the lock all the same
            db.discard(lock_conn)
            raise
        if not locked:
            log.info("people of session %d are being clustered elsewhere", session_id)
            return None
        try:
            return await _recluster(services, session_id, progress)
        finally:
            try:
                await db.unlock_clustering(lock_conn, session_id)
            except BaseException:
                db.discard(lock_conn)  # the lock ends with its connection, never held by one back in the pool
                raise


async def _recluster(services: Services, session_id: int, progress: Progress | None) -> ClusteringReport:
    start = time.perf_counter()
    params = cluster_params(services.settings)
    dim = services.engine.embedding_dim
    report = progress or _quiet
    bulk = services.settings.db_bulk_timeout_s  # statements over the whole session
    async with services.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # one snapshot: embeddings, facts and placements of the same faces
        changed_at_start = await db.changed_faces(conn, session_id)
        ids, vectors = await db.session_embeddings(conn, session_id, dim, timeout=bulk)
        facts = await db.session_face_facts(conn, session_id, dim, bulk, quality.TOO_WEAK_FOR_PEOPLE)
        assignments = await db.session_assignments(conn, session_id, bulk)
    if not np.array_equal(ids, facts.ids):
        raise RuntimeError("face snapshot changed between two reads of one transaction")
    n = len(ids)
    report("faces", n, n)

    loop = asyncio.get_running_loop()
    if n >= services.settings.approximate_min_faces:
        # a big session's served index scans every code per query: a graph of its own is faster (clustering.py)
        def graph_progress(done: int, total: int) -> None:
            loop.call_soon_threadsafe(report, "neighbours", done, total)

        rows, sims = await asyncio.to_thread(
            cell_knn_graph, vectors, params.neighbours, progress=graph_progress
        )
    else:
        rows, sims = await _graph_from_index(services, session_id, ids, vectors, params, report)

    placed, previous = _persons_before(ids, assignments)
    usable = eligible(facts.boxes, facts.det_scores, params, facts.weak)
    clear = clarity(facts.boxes, facts.landmarks, facts.det_scores)

    def merged(done: int, count: int) -> None:
        loop.call_soon_threadsafe(report, "merging", done, count)

    labels = await asyncio.to_thread(
        cluster, vectors, rows, sims, params, usable=usable, images=facts.image_ids, placed=placed, progress=merged
    )
    del vectors, rows, sims

    async with services.pool.acquire() as conn, conn.transaction():
        await db.lock_people_writes(conn, session_id)
        existing = await db.session_person_ids(conn, session_id)
        person_of_label = _persons_for(labels, placed, previous, existing)
        fresh_labels = [label for label, person in person_of_label.items() if person < 0]
        for label, person_id in zip(fresh_labels, await db.create_people(conn, session_id, len(fresh_labels))):
            person_of_label[label] = person_id
        machine = (labels >= 0) & (placed < 0)
        await db.unplace_machine_faces(conn, session_id, bulk)
        await db.place_faces(
            conn,
            session_id,
            ids[machine].tolist(),
            [person_of_label[int(label)] for label in labels[machine].tolist()],
            clear[machine].tolist(),
            organiser_placed=False,
            timeout=bulk,
        )
        await db.refresh_session_people(conn, session_id, bulk)
        await db.note_clustered(conn, session_id, n, changed_at_start)
        people = len(await db.session_person_ids(conn, session_id))
    seconds = time.perf_counter() - start
    log.info("people of session %d: %d faces clustered into %d people in %.1f s", session_id, n, people, seconds)
    return ClusteringReport(n, people, int((labels >= 0).sum()), seconds)


async def _graph_from_index(
    services: Services, session_id: int, ids: np.ndarray, vectors: np.ndarray, params: ClusterParams, report: Progress
) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph from the session's served index, searched in batches on its owner thread between the
    searches of users."""
    n = len(ids)
    rows_of = await asyncio.to_thread(RowsOfIds, ids)
    rows = np.full((n, params.neighbours), -1, dtype=ROW)
    sims = np.zeros((n, params.neighbours), dtype=np.float32)
    for begin in range(0, n, params.batch):
        part = slice(begin, begin + params.batch)
        found_sims, found_ids = await services.indexes.search(session_id, vectors[part], params.neighbours + 1)
        rows[part], sims[part] = await asyncio.to_thread(
            neighbour_lists, found_sims, found_ids, rows_of, begin, params.neighbours
        )
        report("neighbours", min(n, begin + params.batch), n)
    return rows, sims


def _persons_before(ids: np.ndarray, assignments: db.Assignments) -> tuple[np.ndarray, np.ndarray]:
    """(the organiser's person, the machine's person) of each face of `ids` before this clustering, -1 where
    none; by array lookups, not a dict of a million faces."""
    placed = np.full(len(ids), -1, dtype=np.int64)
    previous = np.full(len(ids), -1, dtype=np.int64)
    at = RowsOfIds(ids)(assignments.face_ids)
    known = at >= 0  # a face deleted since the snapshot of ids has no row
    by_organiser = assignments.organiser_placed[known]
    placed[at[known][by_organiser]] = assignments.person_ids[known][by_organiser]
    previous[at[known][~by_organiser]] = assignments.person_ids[known][~by_organiser]
    return placed, previous


def _persons_for(
    labels: np.ndarray, placed: np.ndarray, previous: np.ndarray, existing: set[int]
) -> dict[int, int]:
    """Person id per cluster label (-1: a new person). A cluster holding an organiser's faces is their
    person; any other keeps the id of the person most of its faces were in before (each id once), so ids
    stay stable across clusterings."""
    person_of_label: dict[int, int] = {}
    taken: set[int] = set()
    in_cluster = labels >= 0
    for label, person in zip(labels[in_cluster & (placed >= 0)].tolist(), placed[in_cluster & (placed >= 0)].tolist()):
        person_of_label[label] = person
        taken.add(person)
    votes: dict[tuple[int, int], int] = {}
    for label, person in zip(labels[in_cluster & (previous >= 0)].tolist(), previous[in_cluster & (previous >= 0)].tolist()):
        if label not in person_of_label:
            votes[(label, person)] = votes.get((label, person), 0) + 1
    for (label, person), _ in sorted(votes.items(), key=lambda item: -item[1]):
        if label not in person_of_label and person not in taken and person in existing:
            person_of_label[label] = person
            taken.add(person)
    for label in np.unique(labels[in_cluster]).tolist():
        person_of_label.setdefault(label, -1)
    return person_of_label


async def place_new_faces(
    services: Services, session_id: int, image_id: int, face_ids: Sequence[int], faces: Sequence[DetectedFace]
) -> list[int | None]:
    """New faces (already in the index) join the person their nearest neighbours are in, when those
    neighbours are on average as close as a clustering would demand; others wait. Returns each face's person.
    Two faces of one photo never join one person, nor a person already in that photo."""
    params = cluster_params(services.settings)
    result: list[int | None] = [None] * len(face_ids)
    if not len(face_ids):
        return result
    boxes = np.stack([f.box for f in faces])
    weak = np.array([f.quality in quality.TOO_WEAK_FOR_PEOPLE for f in faces], dtype=bool)
    usable = eligible(boxes, np.array([f.det_score for f in faces]), params, weak)
    if not usable.any():
        return result
    if not services.indexes.is_loaded(session_id):
        # an upload never opens a session's index (a big one takes seconds): its faces wait for the next
        # clustering, which opens it, or join once a search or the preload has opened it
        await _count_changes(services, session_id, int(usable.sum()))
        return result
    chosen = np.flatnonzero(usable)
    own = {int(i) for i in face_ids}
    sims, neighbours = await services.indexes.search(
        session_id, np.stack([faces[i].embedding for i in chosen.tolist()]), params.neighbours + len(own)
    )
    persons = await db.persons_of_faces(services.pool, [int(i) for i in np.unique(neighbours) if i >= 0])
    proposals: list[tuple[float, int, int]] = []  # (mean similarity, face index, person)
    for row, at in enumerate(chosen.tolist()):
        by_person: dict[int, list[float]] = {}
        for sim, neighbour in zip(sims[row].tolist(), neighbours[row].tolist()):
            person = persons.get(neighbour)
            if neighbour < 0 or neighbour in own or person is None or sim < params.edge_similarity:
                continue
            by_person.setdefault(person, []).append(sim)
        for person, person_sims in by_person.items():
            mean = float(np.mean(person_sims))
            if mean >= params.link_similarity:
                proposals.append((mean, at, person))
    clear = clarity(boxes, np.stack([f.landmarks for f in faces]), np.array([f.det_score for f in faces]))
    async with services.pool.acquire() as conn, conn.transaction():
        await db.lock_people_writes(conn, session_id)
        in_photo = {person for person, _ in await db.persons_in_images(conn, [image_id])}
        existing = await db.session_person_ids(conn, session_id)
        for _, at, person in sorted(proposals, reverse=True):  # best first; one face per person per photo
            if result[at] is None and person not in in_photo and person in existing:
                result[at] = person
                in_photo.add(person)
        placed = [at for at, person in enumerate(result) if person is not None]
        if placed:
            await db.place_faces(
                conn,
                session_id,
                [face_ids[at] for at in placed],
                [result[at] for at in placed],  # type: ignore[misc]
                [float(clear[at]) for at in placed],
                organiser_placed=False,
            )
            await db.refresh_people(conn, {result[at] for at in placed})  # type: ignore[arg-type]
        changed, clustered = await db.note_changed_faces(conn, session_id, int(usable.sum()))
    if _due(services.settings, changed, clustered):
        schedule_recluster(services, session_id)
    return result


async def _count_changes(services: Services, session_id: int, faces: int) -> None:
    changed, clustered = await db.note_changed_faces(services.pool, session_id, faces)
    if _due(services.settings, changed, clustered):
        schedule_recluster(services, session_id)


def _due(settings: Settings, changed: int, clustered: int) -> bool:
    return changed >= max(settings.people_recluster_min_changes, settings.people_recluster_share * clustered)


async def faces_removed(conn: db.Connection, session_id: int, persons: Sequence[int], faces: int) -> None:
    """Inside the transaction that deleted faces, which took lock_people_writes before deleting any: their
    people's counts and covers follow at once (an emptied person disappears), and the removal counts toward
    the next clustering."""
    await db.refresh_people(conn, persons)
    if faces:
        await db.note_changed_faces(conn, session_id, faces)


def schedule_recluster(services: Services, session_id: int) -> None:
    """A full clustering in the background of this process (at most one per session here; the advisory lock
    keeps other processes from running one at the same time)."""

    services.jobs.start(
        ("people", session_id),
        lambda: recluster(services, session_id),
        f"clustering the people of session {session_id}",
    )


async def require_person(services: Services, session_id: int, person_id: int) -> db.Person:
    await face_sessions.require_session(services, session_id)
    person = await db.get_person(services.pool, session_id, person_id)
    if person is None:
        raise PersonNotFound(f"person {person_id} does not exist in session {session_id}")
    return person


async def merge_people(services: Services, session_id: int, person_id: int, other_id: int) -> db.Person:
    """Every face of `other` becomes this person's; all of them stay together through later clusterings."""
    if other_id == person_id:
        raise BadRequest("a person cannot be merged with itself")
    await require_person(services, session_id, person_id)
    await require_person(services, session_id, other_id)
    async with services.pool.acquire() as conn, conn.transaction():
        await db.lock_people_writes(conn, session_id)
        await db.move_faces(conn, await db.person_face_ids(conn, other_id), person_id)
        await db.pin_person(conn, person_id)
        await db.refresh_people(conn, [person_id, other_id])
        merged = await db.get_person(conn, session_id, person_id)
    if merged is None:
        raise PersonNotFound(f"person {person_id} was removed meanwhile")
    return merged


async def split_person(
    services: Services, session_id: int, person_id: int, face_ids: Sequence[int]
) -> tuple[db.Person, db.Person]:
    """These faces of the person become a new person; both sides stay as the organiser left them."""
    await require_person(services, session_id, person_id)
    wanted = {int(i) for i in face_ids}
    if not wanted:
        raise BadRequest("face_ids must name at least one face of the person")
    async with services.pool.acquire() as conn, conn.transaction():
        await db.lock_people_writes(conn, session_id)
        faces = set(await db.person_face_ids(conn, person_id))
        strangers = sorted(wanted - faces)
        if strangers:
            raise BadRequest(f"faces {strangers[:10]} are not faces of person {person_id}")
        if wanted == faces:
            raise BadRequest("a split must leave the person at least one face")
        (new_id,) = await db.create_people(conn, session_id, 1)
        await db.move_faces(conn, sorted(wanted), new_id)
        await db.pin_person(conn, person_id)
        await db.refresh_people(conn, [person_id, new_id])
        kept, split_off = await db.get_person(conn, session_id, person_id), await db.get_person(conn, session_id, new_id)
    assert kept is not None and split_off is not None
    return kept, split_off
