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

-- access: API keys, signing keys of image URLs, the privacy audit, session expiry.
-- API keys: only the SHA-256 of a key is kept (a random 256-bit key needs no slow hash); the prefix
-- (the key's first characters) finds the row and is what lists and logs show.
CREATE TABLE IF NOT EXISTS api_keys (
    id            bigserial   PRIMARY KEY,
    prefix        text        NOT NULL UNIQUE,
    key_hash      bytea       NOT NULL CHECK (octet_length(key_hash) = 32),
    name          text        NOT NULL DEFAULT '',
    scopes        text[]      NOT NULL,
    -- NULL: every session; else the only sessions the key sees and touches
    session_ids   bigint[],
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- Secrets that sign image URLs, shared by every worker and node: the newest live one signs, every live
-- one verifies; a retired one verifies nothing.
CREATE TABLE IF NOT EXISTS url_signing_keys (
    kid         text        PRIMARY KEY,
    secret      bytea       NOT NULL CHECK (octet_length(secret) >= 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);

-- What a forget request did: when, by which key, how much. Never a selfie, an embedding or a face box.
-- No foreign key: the record outlives the session.
CREATE TABLE IF NOT EXISTS privacy_audit (
    id               bigserial   PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    action           text        NOT NULL,
    key_prefix       text,
    face_session_id  bigint      NOT NULL,
    faces_erased     integer     NOT NULL,
    images_touched   integer     NOT NULL
);

-- sessions created with expires_in_days are deleted by the service once past this
ALTER TABLE face_sessions ADD COLUMN IF NOT EXISTS expires_at timestamptz;
CREATE INDEX IF NOT EXISTS face_sessions_expires_at_idx ON face_sessions (expires_at) WHERE expires_at IS NOT NULL;
