"""Table privacy_audit: what a forget request did. Never a selfie, an embedding or a face box."""

from __future__ import annotations

from .pool import Connection


async def record_forget(
    conn: Connection, key_prefix: str | None, session_id: int, faces_erased: int, images_touched: int
) -> None:
    await conn.execute(
        "INSERT INTO privacy_audit (action, key_prefix, face_session_id, faces_erased, images_touched) "
        "VALUES ('forget', $1, $2, $3, $4)",
        key_prefix,
        session_id,
        faces_erased,
        images_touched,
    )
