-- The whole schema as src/faceserve/db/migrations/ leave it, made by `faceserve db schema > schema.sql`.
-- Change the schema with a new migration, then make this file again; never edit it by hand.

CREATE FUNCTION public.live_searches_changed() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO live_versions (face_session_id, version)
    SELECT s.face_session_id, nextval('live_versions_seq')
    FROM (SELECT DISTINCT face_session_id FROM changed) s
    ON CONFLICT (face_session_id) DO UPDATE SET version = excluded.version;
    RETURN NULL;
END
$$;

CREATE TABLE public.api_keys (
    id bigint NOT NULL,
    prefix text NOT NULL,
    key_hash bytea NOT NULL,
    name text DEFAULT ''::text NOT NULL,
    scopes text[] NOT NULL,
    session_ids bigint[],
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone,
    last_used_at timestamp with time zone,
    revoked_at timestamp with time zone,
    CONSTRAINT api_keys_key_hash_check CHECK ((octet_length(key_hash) = 32))
);

CREATE SEQUENCE public.api_keys_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.api_keys_id_seq OWNED BY public.api_keys.id;

CREATE TABLE public.deleted_images (
    image_id bigint NOT NULL,
    face_session_id bigint NOT NULL,
    file_path text NOT NULL,
    sha256 bytea NOT NULL,
    deleted_at timestamp with time zone DEFAULT now() NOT NULL,
    files_removed boolean DEFAULT false NOT NULL,
    owner_pid integer,
    owner_started timestamp with time zone
);

CREATE TABLE public.deleted_sessions (
    id bigint NOT NULL,
    deleted_at timestamp with time zone DEFAULT now() NOT NULL,
    files_removed boolean DEFAULT false NOT NULL,
    owner_pid integer,
    owner_started timestamp with time zone
);

CREATE TABLE public.face_people (
    face_id bigint NOT NULL,
    person_id bigint NOT NULL,
    face_session_id bigint NOT NULL,
    image_id bigint NOT NULL,
    organiser_placed boolean DEFAULT false NOT NULL,
    clarity real DEFAULT 0 NOT NULL
);

CREATE TABLE public.face_session_image_aliases (
    file_path text NOT NULL,
    image_id bigint NOT NULL
);

CREATE TABLE public.face_session_images (
    id bigint NOT NULL,
    face_session_id bigint NOT NULL,
    file_path text NOT NULL,
    stored_name text NOT NULL,
    original_name text NOT NULL,
    content_type text NOT NULL,
    byte_size bigint NOT NULL,
    sha256 bytea NOT NULL,
    width integer NOT NULL,
    height integer NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    bytes_in text DEFAULT 'file'::text NOT NULL,
    CONSTRAINT face_session_images_byte_size_check CHECK ((byte_size >= 0)),
    CONSTRAINT face_session_images_bytes_in_check CHECK ((bytes_in = ANY (ARRAY['file'::text, 'postgres'::text, 's3'::text]))),
    CONSTRAINT face_session_images_height_check CHECK ((height > 0)),
    CONSTRAINT face_session_images_sha256_check CHECK ((octet_length(sha256) = 32)),
    CONSTRAINT face_session_images_width_check CHECK ((width > 0))
);

CREATE SEQUENCE public.face_session_images_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.face_session_images_id_seq OWNED BY public.face_session_images.id;

CREATE TABLE public.face_sessions (
    id bigint NOT NULL,
    name text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone
);

CREATE SEQUENCE public.face_sessions_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.face_sessions_id_seq OWNED BY public.face_sessions.id;

CREATE TABLE public.faces (
    id bigint NOT NULL,
    image_id bigint NOT NULL,
    face_session_id bigint NOT NULL,
    box real[] NOT NULL,
    landmarks real[] NOT NULL,
    det_score real NOT NULL,
    embedding bytea NOT NULL,
    embedding_dim integer NOT NULL,
    quality text,
    CONSTRAINT faces_box_check CHECK ((array_length(box, 1) = 4)),
    CONSTRAINT faces_check CHECK ((octet_length(embedding) = (4 * embedding_dim))),
    CONSTRAINT faces_landmarks_check CHECK ((array_length(landmarks, 1) = 10)),
    CONSTRAINT faces_quality_check CHECK ((quality = ANY (ARRAY['ok'::text, 'too_small'::text, 'blurred'::text, 'turned'::text])))
);

CREATE SEQUENCE public.faces_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.faces_id_seq OWNED BY public.faces.id;

CREATE TABLE public.image_blobs (
    image_id bigint NOT NULL,
    data bytea NOT NULL
);
ALTER TABLE ONLY public.image_blobs ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE public.live_matches (
    id bigint NOT NULL,
    live_search_id bigint NOT NULL,
    image_id bigint NOT NULL,
    face_id bigint NOT NULL,
    distance real NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE SEQUENCE public.live_matches_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.live_matches_id_seq OWNED BY public.live_matches.id;

CREATE TABLE public.live_searches (
    id bigint NOT NULL,
    face_session_id bigint NOT NULL,
    embedding bytea NOT NULL,
    embedding_dim integer NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    created_by text,
    CONSTRAINT live_searches_check CHECK ((octet_length(embedding) = (4 * embedding_dim)))
);

CREATE SEQUENCE public.live_searches_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.live_searches_id_seq OWNED BY public.live_searches.id;

CREATE TABLE public.live_versions (
    face_session_id bigint NOT NULL,
    version bigint NOT NULL
);

CREATE SEQUENCE public.live_versions_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

CREATE TABLE public.pending_uploads (
    file_path text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    owner_pid integer,
    owner_started timestamp with time zone
);

CREATE TABLE public.people (
    id bigint NOT NULL,
    face_session_id bigint NOT NULL,
    face_count integer DEFAULT 0 NOT NULL,
    image_count integer DEFAULT 0 NOT NULL,
    cover_face_id bigint,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE SEQUENCE public.people_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.people_id_seq OWNED BY public.people.id;

CREATE TABLE public.people_state (
    face_session_id bigint NOT NULL,
    clustered_faces integer DEFAULT 0 NOT NULL,
    changed_faces integer DEFAULT 0 NOT NULL,
    clustered_at timestamp with time zone
);

CREATE TABLE public.privacy_audit (
    id bigint NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    action text NOT NULL,
    key_prefix text,
    face_session_id bigint NOT NULL,
    faces_erased integer NOT NULL,
    images_touched integer NOT NULL
);

CREATE SEQUENCE public.privacy_audit_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.privacy_audit_id_seq OWNED BY public.privacy_audit.id;

CREATE TABLE public.schema_version (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.setup_tokens (
    id bigint NOT NULL,
    token_hash bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    used_at timestamp with time zone,
    CONSTRAINT setup_tokens_token_hash_check CHECK ((octet_length(token_hash) = 32))
);

CREATE SEQUENCE public.setup_tokens_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.setup_tokens_id_seq OWNED BY public.setup_tokens.id;

CREATE TABLE public.url_signing_keys (
    kid text NOT NULL,
    secret bytea NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    retired_at timestamp with time zone,
    CONSTRAINT url_signing_keys_secret_check CHECK ((octet_length(secret) >= 32))
);

ALTER TABLE ONLY public.api_keys ALTER COLUMN id SET DEFAULT nextval('public.api_keys_id_seq'::regclass);

ALTER TABLE ONLY public.face_session_images ALTER COLUMN id SET DEFAULT nextval('public.face_session_images_id_seq'::regclass);

ALTER TABLE ONLY public.face_sessions ALTER COLUMN id SET DEFAULT nextval('public.face_sessions_id_seq'::regclass);

ALTER TABLE ONLY public.faces ALTER COLUMN id SET DEFAULT nextval('public.faces_id_seq'::regclass);

ALTER TABLE ONLY public.live_matches ALTER COLUMN id SET DEFAULT nextval('public.live_matches_id_seq'::regclass);

ALTER TABLE ONLY public.live_searches ALTER COLUMN id SET DEFAULT nextval('public.live_searches_id_seq'::regclass);

ALTER TABLE ONLY public.people ALTER COLUMN id SET DEFAULT nextval('public.people_id_seq'::regclass);

ALTER TABLE ONLY public.privacy_audit ALTER COLUMN id SET DEFAULT nextval('public.privacy_audit_id_seq'::regclass);

ALTER TABLE ONLY public.setup_tokens ALTER COLUMN id SET DEFAULT nextval('public.setup_tokens_id_seq'::regclass);

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_prefix_key UNIQUE (prefix);

ALTER TABLE ONLY public.deleted_images
    ADD CONSTRAINT deleted_images_pkey PRIMARY KEY (image_id);

ALTER TABLE ONLY public.deleted_sessions
    ADD CONSTRAINT deleted_sessions_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.face_people
    ADD CONSTRAINT face_people_pkey PRIMARY KEY (face_id);

ALTER TABLE ONLY public.face_session_image_aliases
    ADD CONSTRAINT face_session_image_aliases_pkey PRIMARY KEY (file_path);

ALTER TABLE ONLY public.face_session_images
    ADD CONSTRAINT face_session_images_face_session_id_sha256_key UNIQUE (face_session_id, sha256);

ALTER TABLE ONLY public.face_session_images
    ADD CONSTRAINT face_session_images_face_session_id_stored_name_key UNIQUE (face_session_id, stored_name);

ALTER TABLE ONLY public.face_session_images
    ADD CONSTRAINT face_session_images_file_path_key UNIQUE (file_path);

ALTER TABLE ONLY public.face_session_images
    ADD CONSTRAINT face_session_images_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.face_sessions
    ADD CONSTRAINT face_sessions_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.faces
    ADD CONSTRAINT faces_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.image_blobs
    ADD CONSTRAINT image_blobs_pkey PRIMARY KEY (image_id);

ALTER TABLE ONLY public.live_matches
    ADD CONSTRAINT live_matches_live_search_id_image_id_key UNIQUE (live_search_id, image_id);

ALTER TABLE ONLY public.live_matches
    ADD CONSTRAINT live_matches_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.live_searches
    ADD CONSTRAINT live_searches_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.live_versions
    ADD CONSTRAINT live_versions_pkey PRIMARY KEY (face_session_id);

ALTER TABLE ONLY public.pending_uploads
    ADD CONSTRAINT pending_uploads_pkey PRIMARY KEY (file_path);

ALTER TABLE ONLY public.people
    ADD CONSTRAINT people_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.people_state
    ADD CONSTRAINT people_state_pkey PRIMARY KEY (face_session_id);

ALTER TABLE ONLY public.privacy_audit
    ADD CONSTRAINT privacy_audit_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.schema_version
    ADD CONSTRAINT schema_version_pkey PRIMARY KEY (version);

ALTER TABLE ONLY public.setup_tokens
    ADD CONSTRAINT setup_tokens_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.setup_tokens
    ADD CONSTRAINT setup_tokens_token_hash_key UNIQUE (token_hash);

ALTER TABLE ONLY public.url_signing_keys
    ADD CONSTRAINT url_signing_keys_pkey PRIMARY KEY (kid);

CREATE INDEX deleted_images_file_path_idx ON public.deleted_images USING btree (file_path);

CREATE INDEX deleted_images_pending_idx ON public.deleted_images USING btree (image_id) WHERE (NOT files_removed);

CREATE INDEX deleted_images_session_sha256_idx ON public.deleted_images USING btree (face_session_id, sha256);

CREATE INDEX face_people_person_image_idx ON public.face_people USING btree (person_id, image_id);

CREATE INDEX face_people_session_idx ON public.face_people USING btree (face_session_id);

CREATE INDEX face_session_image_aliases_image_id_idx ON public.face_session_image_aliases USING btree (image_id);

CREATE INDEX face_session_images_session_id_idx ON public.face_session_images USING btree (face_session_id, id);

CREATE INDEX face_sessions_expires_at_idx ON public.face_sessions USING btree (expires_at) WHERE (expires_at IS NOT NULL);

CREATE INDEX faces_image_id_idx ON public.faces USING btree (image_id);

CREATE INDEX faces_session_id_idx ON public.faces USING btree (face_session_id, id);

CREATE INDEX live_matches_face_id_idx ON public.live_matches USING btree (face_id);

CREATE INDEX live_matches_image_id_idx ON public.live_matches USING btree (image_id);

CREATE INDEX live_matches_stream_idx ON public.live_matches USING btree (live_search_id, id);

CREATE INDEX live_searches_session_id_idx ON public.live_searches USING btree (face_session_id, id);

CREATE INDEX people_session_image_count_idx ON public.people USING btree (face_session_id, image_count DESC, id);

CREATE TRIGGER live_searches_made AFTER INSERT ON public.live_searches REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION public.live_searches_changed();

CREATE TRIGGER live_searches_removed AFTER DELETE ON public.live_searches REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION public.live_searches_changed();

ALTER TABLE ONLY public.face_people
    ADD CONSTRAINT face_people_face_id_fkey FOREIGN KEY (face_id) REFERENCES public.faces(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.face_people
    ADD CONSTRAINT face_people_face_session_id_fkey FOREIGN KEY (face_session_id) REFERENCES public.face_sessions(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.face_people
    ADD CONSTRAINT face_people_person_id_fkey FOREIGN KEY (person_id) REFERENCES public.people(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.face_session_image_aliases
    ADD CONSTRAINT face_session_image_aliases_image_id_fkey FOREIGN KEY (image_id) REFERENCES public.face_session_images(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.face_session_images
    ADD CONSTRAINT face_session_images_face_session_id_fkey FOREIGN KEY (face_session_id) REFERENCES public.face_sessions(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.faces
    ADD CONSTRAINT faces_face_session_id_fkey FOREIGN KEY (face_session_id) REFERENCES public.face_sessions(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.faces
    ADD CONSTRAINT faces_image_id_fkey FOREIGN KEY (image_id) REFERENCES public.face_session_images(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.image_blobs
    ADD CONSTRAINT image_blobs_image_id_fkey FOREIGN KEY (image_id) REFERENCES public.face_session_images(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.live_matches
    ADD CONSTRAINT live_matches_face_id_fkey FOREIGN KEY (face_id) REFERENCES public.faces(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.live_matches
    ADD CONSTRAINT live_matches_image_id_fkey FOREIGN KEY (image_id) REFERENCES public.face_session_images(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.live_matches
    ADD CONSTRAINT live_matches_live_search_id_fkey FOREIGN KEY (live_search_id) REFERENCES public.live_searches(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.live_searches
    ADD CONSTRAINT live_searches_face_session_id_fkey FOREIGN KEY (face_session_id) REFERENCES public.face_sessions(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.people
    ADD CONSTRAINT people_cover_face_id_fkey FOREIGN KEY (cover_face_id) REFERENCES public.faces(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.people
    ADD CONSTRAINT people_face_session_id_fkey FOREIGN KEY (face_session_id) REFERENCES public.face_sessions(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.people_state
    ADD CONSTRAINT people_state_face_session_id_fkey FOREIGN KEY (face_session_id) REFERENCES public.face_sessions(id) ON DELETE CASCADE;
