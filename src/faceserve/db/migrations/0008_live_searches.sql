-- Live results (issue 26): a guest's live search keeps the embedding of the selfie's face (never the
-- selfie) until expires_at (FACESERVE_LIVE_SEARCH_HOURS); every upload of the session is compared with it
-- and each new photo that matches is recorded once, its serial id being the stream's event id.
CREATE TABLE live_searches (
    id               bigserial   PRIMARY KEY,
    face_session_id  bigint      NOT NULL REFERENCES face_sessions (id) ON DELETE CASCADE,
    -- L2-normalised embedding of the probe's face as little-endian float32, as faces.embedding
    embedding        bytea       NOT NULL,
    embedding_dim    integer     NOT NULL CHECK (octet_length(embedding) = 4 * embedding_dim),
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    -- the prefix of the key that made it (none with auth off), never the key
    created_by       text
);

CREATE INDEX live_searches_session_id_idx ON live_searches (face_session_id, id);

CREATE TABLE live_matches (
    -- the Server-Sent Events id: a stream resumes after the last one it sent
    id              bigserial   PRIMARY KEY,
    live_search_id  bigint      NOT NULL REFERENCES live_searches (id) ON DELETE CASCADE,
    -- a deleted image or a forgotten face takes its matches along: never pushed afterwards
    image_id        bigint      NOT NULL REFERENCES face_session_images (id) ON DELETE CASCADE,
    face_id         bigint      NOT NULL REFERENCES faces (id) ON DELETE CASCADE,
    distance        real        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (live_search_id, image_id)
);

CREATE INDEX live_matches_stream_idx ON live_matches (live_search_id, id);
CREATE INDEX live_matches_image_id_idx ON live_matches (image_id);
CREATE INDEX live_matches_face_id_idx ON live_matches (face_id);
