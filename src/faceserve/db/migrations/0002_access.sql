-- 0002: access control and privacy: API keys, the keys that sign image URLs, the privacy audit, session expiry.
-- API keys: only the SHA-256 of a key is kept (a random 256-bit key needs no slow hash); the prefix
-- (the key's first characters) finds the row and is what lists and logs show.
CREATE TABLE api_keys (
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
CREATE TABLE url_signing_keys (
    kid         text        PRIMARY KEY,
    secret      bytea       NOT NULL CHECK (octet_length(secret) >= 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);

-- What a forget request did: when, by which key, how much. Never a selfie, an embedding or a face box.
-- No foreign key: the record outlives the session.
CREATE TABLE privacy_audit (
    id               bigserial   PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    action           text        NOT NULL,
    key_prefix       text,
    face_session_id  bigint      NOT NULL,
    faces_erased     integer     NOT NULL,
    images_touched   integer     NOT NULL
);

-- sessions created with expires_in_days are deleted by the service once past this
ALTER TABLE face_sessions ADD COLUMN expires_at timestamptz;
CREATE INDEX face_sessions_expires_at_idx ON face_sessions (expires_at) WHERE expires_at IS NOT NULL;
