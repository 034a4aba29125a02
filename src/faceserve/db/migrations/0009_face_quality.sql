-- Each face's quality verdict, made at ingest from vision/quality.py's measures against the limits a probe
-- is held to (PROBE_MIN_EYE_DISTANCE, PROBE_MIN_SHARPNESS, PROBE_MAX_TURN): 'ok', or the first limit it is
-- past. An upload is never refused for it; a weak face is kept and marked, and a too small or blurred one
-- takes no part in people clustering.
-- NULL: not measured (faces recorded before this column). A label and not the three measures: every reader
-- (the API, clustering) needs the verdict, and a measure is only comparable with those of the code that made
-- it (the sharpness is a formula of the aligned crop), so stored numbers would invite re-judging old faces on
-- a scale that has since moved. Nullable and without a default: adding it rewrites no row.
ALTER TABLE faces ADD COLUMN quality text
    CONSTRAINT faces_quality_check CHECK (quality IN ('ok', 'too_small', 'blurred', 'turned'));
