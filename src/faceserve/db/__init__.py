"""Postgres: the pool and schema migrations, and one module of small query functions per table family.

Callers use the package as one namespace (`db.get_image(pool, 1)`); the modules say where each query lives.
"""

from .audit import record_forget
from .blobs import blob, blob_range, blob_size, insert_blob
from .faces import (
    FaceHit,
    FaceRecord,
    NewFace,
    delete_faces,
    embeddings_by_ids,
    faces_with_images,
    get_face,
    insert_faces,
    session_embeddings,
    session_face_stats,
)
from .images import (
    ImageRecord,
    ServedImage,
    add_alias,
    delete_image,
    find_image_by_path,
    find_image_by_sha256,
    get_image,
    get_served_image,
    insert_image,
    list_images,
    session_file_paths,
)
from .pool import (
    Connection,
    create_pool,
    database_uri,
    embedded_postgres,
    embedded_postgres_blocking,
    ping,
)
from .sessions import (
    FaceSession,
    create_session,
    delete_session,
    expired_sessions,
    get_session,
    list_sessions,
    session_counts,
    set_expiry,
)

__all__ = [
    "Connection",
    "FaceHit",
    "FaceRecord",
    "FaceSession",
    "ImageRecord",
    "NewFace",
    "ServedImage",
    "add_alias",
    "blob",
    "blob_range",
    "blob_size",
    "create_pool",
    "create_session",
    "database_uri",
    "delete_faces",
    "delete_image",
    "delete_session",
    "embedded_postgres",
    "embedded_postgres_blocking",
    "embeddings_by_ids",
    "expired_sessions",
    "faces_with_images",
    "find_image_by_path",
    "find_image_by_sha256",
    "get_face",
    "get_image",
    "get_served_image",
    "get_session",
    "insert_blob",
    "insert_faces",
    "insert_image",
    "list_images",
    "list_sessions",
    "ping",
    "record_forget",
    "session_counts",
    "session_embeddings",
    "session_face_stats",
    "session_file_paths",
    "set_expiry",
]
