-- 0005: the records of crash safety (0003) name the database backend that wrote them, so that in a fleet
-- (several nodes on one Postgres and one shared storage) a node's start-up sweep touches only work whose
-- writer is gone, never an upload or a delete that another node still has in flight (core/start_sweep.py).
-- owner_pid is that backend's pg_backend_pid(), owner_started its backend_start: Postgres reuses pids, the
-- pair it does not. Rows written before this migration have no owner and count as abandoned.
ALTER TABLE pending_uploads
    ADD COLUMN owner_pid      integer,
    ADD COLUMN owner_started  timestamptz;

ALTER TABLE deleted_images
    ADD COLUMN owner_pid      integer,
    ADD COLUMN owner_started  timestamptz;

ALTER TABLE deleted_sessions
    ADD COLUMN owner_pid      integer,
    ADD COLUMN owner_started  timestamptz;
