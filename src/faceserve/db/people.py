"""Tables people, face_people and people_state: who is in a session, which face is whose, what changed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import locks
from .binary_copy import copy_records
from .pool import Connection


@dataclass(frozen=True)
class Person:
    id: int
    face_session_id: int
    face_count: int
    image_count: int
    cover_face_id: int | None


_PERSON = "SELECT id, face_session_id, face_count, image_count, cover_face_id FROM people"


# advisory locks of a session (db/locks.py): writes to its people take turns (merges, splits, a clustering's
# result, new faces joining); one full clustering per session at a time


async def lock_people_writes(conn: Connection, session_id: int) -> None:
    """Inside a transaction: until it ends, no other writer changes this session's people. Taken first, before
    any row of the session is read for change or written, by every transaction that changes its faces or
    people (placements, clusterings, merges, splits, image and session deletes, forget): one lock order. A
    delete that took it only after its rows deadlocked with an upload's faces joining people, each holding
    what the other waited for (a person's row, this lock)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, ($2::bigint % 2147483647)::int)", locks.PEOPLE_WRITE, session_id)


async def try_lock_clustering(conn: Connection, session_id: int) -> bool:
    """On a connection held for the clustering: True if no other process is clustering this session."""
    return bool(
        await conn.fetchval("SELECT pg_try_advisory_lock($1, ($2::bigint % 2147483647)::int)", locks.PEOPLE_CLUSTERING, session_id)
    )


async def unlock_clustering(conn: Connection, session_id: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1, ($2::bigint % 2147483647)::int)", locks.PEOPLE_CLUSTERING, session_id)


async def get_person(conn: Connection, session_id: int, person_id: int) -> Person | None:
    row = await conn.fetchrow(f"{_PERSON} WHERE id = $1 AND face_session_id = $2", person_id, session_id)
    return None if row is None else Person(**dict(row))


async def list_people(
    conn: Connection, session_id: int, after: tuple[int, int] | None, limit: int
) -> list[Person]:
    """Most photographed first, then by id; after = (image_count, id) of the last person of the page before."""
    if after is None:
        rows = await conn.fetch(
            f"{_PERSON} WHERE face_session_id = $1 ORDER BY image_count DESC, id LIMIT $2", session_id, limit
        )
    else:
        rows = await conn.fetch(
            f"{_PERSON} WHERE face_session_id = $1 AND (image_count < $2 OR (image_count = $2 AND id > $3)) "
            "ORDER BY image_count DESC, id LIMIT $4",
            session_id,
            after[0],
            after[1],
            limit,
        )
    return [Person(**dict(r)) for r in rows]


@dataclass(frozen=True)
class PersonImage:
    image_id: int
    face_id: int
    stored_name: str
    box: list[float]
    quality: str | None


async def person_images(conn: Connection, person_id: int, after: int, limit: int) -> list[PersonImage]:
    """The person's photos by image id (keyset), each with the person's clearest face in it."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (fp.image_id) fp.image_id, fp.face_id, i.stored_name, f.box, f.quality "
        "FROM face_people fp JOIN faces f ON f.id = fp.face_id JOIN face_session_images i ON i.id = fp.image_id "
        "WHERE fp.person_id = $1 AND fp.image_id > $2 ORDER BY fp.image_id, fp.clarity DESC, fp.face_id LIMIT $3",
        person_id,
        after,
        limit,
    )
    return [PersonImage(r["image_id"], r["face_id"], r["stored_name"], list(r["box"]), r["quality"]) for r in rows]


async def person_face_ids(conn: Connection, person_id: int) -> list[int]:
    return [r["face_id"] for r in await conn.fetch("SELECT face_id FROM face_people WHERE person_id = $1", person_id)]


@dataclass(frozen=True)
class FaceFacts:
    """What clustering needs to know of each face of a session, beside its embedding (arrays by face)."""

    ids: np.ndarray
    image_ids: np.ndarray
    boxes: np.ndarray
    landmarks: np.ndarray
    det_scores: np.ndarray
    weak: np.ndarray  # bool: faces.quality one of the caller's weak labels (unmeasured faces, NULL, never are)


async def session_face_facts(
    conn: Connection, session_id: int, dim: int, timeout: float | None = None, weak_labels: Sequence[str] = ()
) -> FaceFacts:
    """What clustering needs of each face, in face id order: one binary COPY, parsed by numpy in one pass
    (a row-by-row read of 1M faces' boxes and landmarks costs minutes of Python objects). A face whose
    quality is one of `weak_labels` comes back weak."""
    rows = await copy_records(
        conn,
        [
            ("id", ">i8", 0),
            ("image_id", ">i8", 0),
            ("box", ">f4", 4),  # the schema holds exactly 4 and 10, never NULL
            ("landmarks", ">f4", 10),
            ("det_score", ">f4", 0),
            ("weak", "?", 0),
        ],
        "SELECT id, image_id, box, landmarks, det_score, coalesce(quality = ANY($3::text[]), false) AS weak "
        "FROM faces WHERE face_session_id = $1 AND embedding_dim = $2 ORDER BY id",
        session_id,
        dim,
        list(weak_labels),
        timeout=timeout,
    )
    return FaceFacts(
        rows["id"].astype(np.int64),
        rows["image_id"].astype(np.int64),
        rows["box"]["value"].astype(np.float32),
        rows["landmarks"]["value"].astype(np.float32),
        rows["det_score"].astype(np.float32),
        rows["weak"].astype(bool),
    )


@dataclass(frozen=True)
class Assignments:
    """Who each placed face of a session is (arrays by face, in face id order)."""

    face_ids: np.ndarray
    person_ids: np.ndarray
    organiser_placed: np.ndarray


async def session_assignments(conn: Connection, session_id: int, timeout: float | None = None) -> Assignments:
    rows = await copy_records(
        conn,
        [("face_id", ">i8", 0), ("person_id", ">i8", 0), ("organiser_placed", "?", 0)],
        "SELECT face_id, person_id, organiser_placed FROM face_people WHERE face_session_id = $1 ORDER BY face_id",
        session_id,
        timeout=timeout,
    )
    return Assignments(
        rows["face_id"].astype(np.int64), rows["person_id"].astype(np.int64), rows["organiser_placed"].copy()
    )


async def persons_of_faces(conn: Connection, face_ids: Sequence[int]) -> dict[int, int]:
    """face id -> person id, for the faces that have one."""
    rows = await conn.fetch(
        "SELECT face_id, person_id FROM face_people WHERE face_id = ANY($1::bigint[])", [int(i) for i in face_ids]
    )
    return {r["face_id"]: r["person_id"] for r in rows}


async def persons_of_image(conn: Connection, image_id: int) -> list[int]:
    rows = await conn.fetch("SELECT DISTINCT person_id FROM face_people WHERE image_id = $1", image_id)
    return [r["person_id"] for r in rows]


async def persons_in_images(conn: Connection, image_ids: Sequence[int]) -> set[tuple[int, int]]:
    """(person id, image id) pairs: who is already in these photos."""
    rows = await conn.fetch(
        "SELECT DISTINCT person_id, image_id FROM face_people WHERE image_id = ANY($1::bigint[])",
        [int(i) for i in image_ids],
    )
    return {(r["person_id"], r["image_id"]) for r in rows}


async def session_person_ids(conn: Connection, session_id: int) -> set[int]:
    return {r["id"] for r in await conn.fetch("SELECT id FROM people WHERE face_session_id = $1", session_id)}


async def create_people(conn: Connection, session_id: int, count: int) -> list[int]:
    rows = await conn.fetch(
        "INSERT INTO people (face_session_id) SELECT $1 FROM generate_series(1, $2) RETURNING id", session_id, count
    )
    return [r["id"] for r in rows]


async def place_faces(
    conn: Connection,
    session_id: int,
    face_ids: Sequence[int],
    person_ids: Sequence[int],
    clarity: Sequence[float],
    organiser_placed: bool,
    timeout: float | None = None,
) -> None:
    """Put faces in people (inserted or moved); image ids come from the faces."""
    await conn.execute(
        "INSERT INTO face_people (face_id, person_id, face_session_id, image_id, organiser_placed, clarity) "
        "SELECT f.id, a.person_id, $1, f.image_id, $5, a.clarity "
        "FROM unnest($2::bigint[], $3::bigint[], $4::real[]) AS a(face_id, person_id, clarity) "
        "JOIN faces f ON f.id = a.face_id AND f.face_session_id = $1 "
        "ON CONFLICT (face_id) DO UPDATE SET person_id = EXCLUDED.person_id, "
        "organiser_placed = EXCLUDED.organiser_placed, clarity = EXCLUDED.clarity "
        # the machine never moves a face an organiser placed, even one placed while it computed
        "WHERE EXCLUDED.organiser_placed OR NOT face_people.organiser_placed",
        session_id,
        [int(i) for i in face_ids],
        [int(i) for i in person_ids],
        [float(c) for c in clarity],
        organiser_placed,
        timeout=timeout,
    )


async def move_faces(conn: Connection, face_ids: Sequence[int], person_id: int) -> None:
    """An organiser's correction: these faces are now this person's, and stay so."""
    await conn.execute(
        "UPDATE face_people SET person_id = $2, organiser_placed = true WHERE face_id = ANY($1::bigint[])",
        [int(i) for i in face_ids],
        person_id,
    )


async def pin_person(conn: Connection, person_id: int) -> None:
    """Mark every face of a person as the organiser's: a correction fixes both sides of it."""
    await conn.execute("UPDATE face_people SET organiser_placed = true WHERE person_id = $1", person_id)


async def unplace_machine_faces(conn: Connection, session_id: int, timeout: float | None = None) -> None:
    """Before a full clustering writes its result: the machine's placements go, the organiser's stay."""
    await conn.execute(
        "DELETE FROM face_people WHERE face_session_id = $1 AND NOT organiser_placed", session_id, timeout=timeout
    )


async def refresh_people(conn: Connection, person_ids: Sequence[int], timeout: float | None = None) -> None:
    """Counts and cover of these people from their faces; a person left without faces disappears."""
    ids = sorted({int(i) for i in person_ids})
    if not ids:
        return
    await conn.execute(
        "WITH stats AS ("
        "  SELECT p.id, count(fp.face_id) AS faces, count(DISTINCT fp.image_id) AS images, "
        "         (array_agg(fp.face_id ORDER BY fp.clarity DESC, fp.face_id))[1] AS cover "
        "  FROM people p LEFT JOIN face_people fp ON fp.person_id = p.id "
        "  WHERE p.id = ANY($1::bigint[]) GROUP BY p.id) "
        "UPDATE people SET face_count = stats.faces, image_count = stats.images, cover_face_id = stats.cover "
        "FROM stats WHERE people.id = stats.id",
        ids,
        timeout=timeout,
    )
    await conn.execute("DELETE FROM people WHERE id = ANY($1::bigint[]) AND face_count = 0", ids, timeout=timeout)


async def refresh_session_people(conn: Connection, session_id: int, timeout: float | None = None) -> None:
    """refresh_people for every person of a session (after a full clustering)."""
    rows = await conn.fetch("SELECT id FROM people WHERE face_session_id = $1", session_id, timeout=timeout)
    await refresh_people(conn, [r["id"] for r in rows], timeout)


async def note_changed_faces(conn: Connection, session_id: int, count: int) -> tuple[int, int]:
    """Count faces added to or removed from a session since its last clustering; returns (changed, clustered)."""
    row = await conn.fetchrow(
        "INSERT INTO people_state (face_session_id, changed_faces) VALUES ($1, $2) "
        "ON CONFLICT (face_session_id) DO UPDATE SET changed_faces = people_state.changed_faces + $2 "
        "RETURNING changed_faces, clustered_faces",
        session_id,
        count,
    )
    return int(row["changed_faces"]), int(row["clustered_faces"])


async def note_clustered(conn: Connection, session_id: int, faces: int, changed_meanwhile: int) -> None:
    """A full clustering of `faces` faces is written; changes counted while it ran stay counted."""
    await conn.execute(
        "INSERT INTO people_state (face_session_id, clustered_faces, changed_faces, clustered_at) "
        "VALUES ($1, $2, 0, now()) ON CONFLICT (face_session_id) DO UPDATE SET clustered_faces = $2, "
        "changed_faces = greatest(0, people_state.changed_faces - $3), clustered_at = now()",
        session_id,
        faces,
        changed_meanwhile,
    )


async def changed_faces(conn: Connection, session_id: int) -> int:
    value = await conn.fetchval("SELECT changed_faces FROM people_state WHERE face_session_id = $1", session_id)
    return int(value or 0)
