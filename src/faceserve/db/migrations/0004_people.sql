-- 0004: people of a session. Faces are grouped into people by clustering (index/clustering.py); an
-- organiser's merges and splits mark the faces they place, and a later re-clustering never moves those.

CREATE TABLE people (
    id               bigserial   PRIMARY KEY,
    face_session_id  bigint      NOT NULL REFERENCES face_sessions (id) ON DELETE CASCADE,
    -- kept by db/people.py refresh_people after every change, so listing needs no aggregate
    face_count       integer     NOT NULL DEFAULT 0,
    image_count      integer     NOT NULL DEFAULT 0,
    -- the clearest face (size, detection score, frontal pose)
    cover_face_id    bigint      REFERENCES faces (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- listing: most photographed first, keyset pages
CREATE INDEX people_session_image_count_idx ON people (face_session_id, image_count DESC, id);

CREATE TABLE face_people (
    face_id           bigint  PRIMARY KEY REFERENCES faces (id) ON DELETE CASCADE,
    person_id         bigint  NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    face_session_id   bigint  NOT NULL REFERENCES face_sessions (id) ON DELETE CASCADE,
    -- the face's image (faces.image_id), here so a person's photos page by an index
    image_id          bigint  NOT NULL,
    -- placed by an organiser's merge or split: clustering never moves it
    organiser_placed  boolean NOT NULL DEFAULT false,
    -- how good a cover the face is (index/clustering.py clarity)
    clarity           real    NOT NULL DEFAULT 0
);

CREATE INDEX face_people_person_image_idx ON face_people (person_id, image_id);
CREATE INDEX face_people_session_idx ON face_people (face_session_id);

-- per session: how much changed since the last full clustering (when enough has, it runs again)
CREATE TABLE people_state (
    face_session_id  bigint      PRIMARY KEY REFERENCES face_sessions (id) ON DELETE CASCADE,
    clustered_faces  integer     NOT NULL DEFAULT 0,
    changed_faces    integer     NOT NULL DEFAULT 0,
    clustered_at     timestamptz
);
