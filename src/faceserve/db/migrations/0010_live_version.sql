-- Live results: every upload compares its faces with the live searches of its session, which each process
-- keeps cached; the session's version here changes with every live search made or removed in it (whatever
-- makes or removes it: the API, forget, the expiry sweep, a session's delete), so an upload checks its cached
-- copy with one read of one row instead of counting the session's live searches (1.2-1.6 ms at 10,000).
-- Versions come from one sequence: a number is never given twice, even to a session id used again (import,
-- restore). No foreign key: a session's delete (a cascade) bumps its row too, without waiting on the
-- session's own row; the expiry sweep removes the rows of sessions gone.
CREATE SEQUENCE live_versions_seq;

CREATE TABLE live_versions (
    face_session_id  bigint PRIMARY KEY,
    version          bigint NOT NULL
);

-- sessions with live searches before this migration
INSERT INTO live_versions (face_session_id, version)
SELECT s.face_session_id, nextval('live_versions_seq')
FROM (SELECT DISTINCT face_session_id FROM live_searches) s;

CREATE FUNCTION live_searches_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO live_versions (face_session_id, version)
    SELECT s.face_session_id, nextval('live_versions_seq')
    FROM (SELECT DISTINCT face_session_id FROM changed) s
    ON CONFLICT (face_session_id) DO UPDATE SET version = excluded.version;
    RETURN NULL;
END
$$;

-- once per statement, each session once (the expiry sweep removes many rows in one statement)
CREATE TRIGGER live_searches_made AFTER INSERT ON live_searches
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION live_searches_changed();
CREATE TRIGGER live_searches_removed AFTER DELETE ON live_searches
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION live_searches_changed();
