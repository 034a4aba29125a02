-- 0003: crash safety: tombstones of deleted photos and sessions, and intents of uploads in flight.

-- crash-safe deletes. A delete records what it removes in the transaction that deletes the rows;
-- the files go after the commit, and what a crash left behind is removed at the next start
-- (core/tombstones.py). The records stay as tombstones, so `faceserve import` never brings a deleted photo or
-- session back.
CREATE TABLE deleted_images (
    image_id         bigint      PRIMARY KEY,
    face_session_id  bigint      NOT NULL,
    file_path        text        NOT NULL,
    sha256           bytea       NOT NULL,
    deleted_at       timestamptz NOT NULL DEFAULT now(),
    -- false until the file and its derived copies are gone
    files_removed    boolean     NOT NULL DEFAULT false
);

CREATE INDEX deleted_images_session_sha256_idx ON deleted_images (face_session_id, sha256);
CREATE INDEX deleted_images_file_path_idx ON deleted_images (file_path);
CREATE INDEX deleted_images_pending_idx ON deleted_images (image_id) WHERE NOT files_removed;

CREATE TABLE deleted_sessions (
    id             bigint      PRIMARY KEY,
    deleted_at     timestamptz NOT NULL DEFAULT now(),
    -- false until the session's folder is gone
    files_removed  boolean     NOT NULL DEFAULT false
);

-- an upload puts its file in place inside the transaction that records its row, so a process
-- killed between the two left a file with no row. Each upload first records the path it is about to
-- fill (committed on its own); its row's transaction removes the record; a start removes the file of each
-- record left over whose path has no row (core/upload_intents.py).
CREATE TABLE pending_uploads (
    file_path   text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
