-- faceserve schema. Applied at every start; every statement is idempotent.

CREATE TABLE IF NOT EXISTS face_sessions (
    id          bigserial PRIMARY KEY,
    name        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS face_session_images (
    id               bigserial PRIMARY KEY,
    face_session_id  bigint      NOT NULL REFERENCES face_sessions (id) ON DELETE CASCADE,
    -- path of the file relative to the storage root: face_sessions/{session_id}/db/{stored_name}
    file_path        text        NOT NULL UNIQUE,
    stored_name      text        NOT NULL,
    original_name    text        NOT NULL,
    content_type     text        NOT NULL,
    byte_size        bigint      NOT NULL CHECK (byte_size >= 0),
    sha256           bytea       NOT NULL CHECK (octet_length(sha256) = 32),
    width            integer     NOT NULL CHECK (width > 0),
    height           integer     NOT NULL CHECK (height > 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- where the bytes are: 'file' (file_path under the storage root) or 'postgres' (image_blobs)
    bytes_in         text        NOT NULL DEFAULT 'file' CHECK (bytes_in IN ('file', 'postgres')),
    UNIQUE (face_session_id, sha256),
    UNIQUE (face_session_id, stored_name)
);

-- databases made before bytes_in existed hold only files
ALTER TABLE face_session_images ADD COLUMN IF NOT EXISTS
    bytes_in text NOT NULL DEFAULT 'file' CHECK (bytes_in IN ('file', 'postgres'));

-- keyset pagination of a session's images
CREATE INDEX IF NOT EXISTS face_session_images_session_id_idx
    ON face_session_images (face_session_id, id);

CREATE TABLE IF NOT EXISTS faces (
    id               bigserial PRIMARY KEY,
    image_id         bigint  NOT NULL REFERENCES face_session_images (id) ON DELETE CASCADE,
    face_session_id  bigint  NOT NULL REFERENCES face_sessions (id) ON DELETE CASCADE,
    -- box in pixels of the stored image: x1, y1, x2, y2
    box              real[]  NOT NULL CHECK (array_length(box, 1) = 4),
    -- five landmarks (eyes, nose, mouth corners) as x, y pairs
    landmarks        real[]  NOT NULL CHECK (array_length(landmarks, 1) = 10),
    det_score        real    NOT NULL,
    -- L2-normalised embedding as little-endian float32; any index is rebuilt from this column
    embedding        bytea   NOT NULL,
    embedding_dim    integer NOT NULL CHECK (octet_length(embedding) = 4 * embedding_dim)
);

CREATE INDEX IF NOT EXISTS faces_session_id_idx ON faces (face_session_id, id);
CREATE INDEX IF NOT EXISTS faces_image_id_idx ON faces (image_id);

-- Other paths that lead to an image: an imported old tree may hold the same bytes under several names,
-- and old links to every one of those names must keep resolving.
CREATE TABLE IF NOT EXISTS face_session_image_aliases (
    file_path  text   PRIMARY KEY,
    image_id   bigint NOT NULL REFERENCES face_session_images (id) ON DELETE CASCADE
);

CREATE INDEX IF NOT EXISTS face_session_image_aliases_image_id_idx ON face_session_image_aliases (image_id);

-- Image bytes of rows with bytes_in = 'postgres' (FACESERVE_IMAGE_STORE=postgres). file_path stays the
-- image's name (its identity and old links) but no file is behind it.
CREATE TABLE IF NOT EXISTS image_blobs (
    image_id  bigint PRIMARY KEY REFERENCES face_session_images (id) ON DELETE CASCADE,
    data      bytea  NOT NULL
);

-- Photos do not compress, and uncompressed out-of-line values let substring() read only the TOAST
-- chunks a byte range needs. Checked first: ALTER TABLE takes a lock every start would otherwise wait on.
DO $$
BEGIN
    IF (SELECT attstorage FROM pg_attribute WHERE attrelid = 'image_blobs'::regclass AND attname = 'data') <> 'e'
    THEN
        ALTER TABLE image_blobs ALTER COLUMN data SET STORAGE EXTERNAL;
    END IF;
END
$$;

-- faults: crash-safe deletes. A delete records what it removes in the transaction that deletes the rows;
-- the files go after the commit, and what a crash left behind is removed at the next start
-- (tombstones.py). The records stay as tombstones, so `faceserve import` never brings a deleted photo or
-- session back.
CREATE TABLE IF NOT EXISTS deleted_images (
    image_id         bigint      PRIMARY KEY,
    face_session_id  bigint      NOT NULL,
    file_path        text        NOT NULL,
    sha256           bytea       NOT NULL,
    deleted_at       timestamptz NOT NULL DEFAULT now(),
    -- false until the file and its derived copies are gone
    files_removed    boolean     NOT NULL DEFAULT false
);

CREATE INDEX IF NOT EXISTS deleted_images_session_sha256_idx ON deleted_images (face_session_id, sha256);
CREATE INDEX IF NOT EXISTS deleted_images_file_path_idx ON deleted_images (file_path);
CREATE INDEX IF NOT EXISTS deleted_images_pending_idx ON deleted_images (image_id) WHERE NOT files_removed;

CREATE TABLE IF NOT EXISTS deleted_sessions (
    id             bigint      PRIMARY KEY,
    deleted_at     timestamptz NOT NULL DEFAULT now(),
    -- false until the session's folder is gone
    files_removed  boolean     NOT NULL DEFAULT false
);

-- faults: crash-safe deletes. A delete records what it removes in the transaction that deletes the rows;
-- the files go after the commit, and what a crash left behind is removed at the next start
-- (tombstones.py). The records stay as tombstones, so `faceserve import` never brings a deleted photo or
-- session back.
CREATE TABLE IF NOT EXISTS deleted_images (
    image_id         bigint      PRIMARY KEY,
    face_session_id  bigint      NOT NULL,
    file_path        text        NOT NULL,
    sha256           bytea       NOT NULL,
    deleted_at       timestamptz NOT NULL DEFAULT now(),
    -- false until the file and its derived copies are gone
    files_removed    boolean     NOT NULL DEFAULT false
);

CREATE INDEX IF NOT EXISTS deleted_images_session_sha256_idx ON deleted_images (face_session_id, sha256);
CREATE INDEX IF NOT EXISTS deleted_images_file_path_idx ON deleted_images (file_path);
CREATE INDEX IF NOT EXISTS deleted_images_pending_idx ON deleted_images (image_id) WHERE NOT files_removed;

CREATE TABLE IF NOT EXISTS deleted_sessions (
    id             bigint      PRIMARY KEY,
    deleted_at     timestamptz NOT NULL DEFAULT now(),
    -- false until the session's folder is gone
    files_removed  boolean     NOT NULL DEFAULT false
);

-- faults: an upload puts its file in place inside the transaction that records its row, so a process
-- killed between the two left a file with no row. Each upload first records the path it is about to
-- fill (committed on its own); its row's transaction removes the record; a start removes the file of each
-- record left over whose path has no row (upload_intents.py).
CREATE TABLE IF NOT EXISTS pending_uploads (
    file_path   text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- faults: an upload puts its file in place inside the transaction that records its row, so a process
-- killed between the two left a file with no row. Each upload first records the path it is about to
-- fill (committed on its own); its row's transaction removes the record; a start removes the file of each
-- record left over whose path has no row (upload_intents.py).
CREATE TABLE IF NOT EXISTS pending_uploads (
    file_path   text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
