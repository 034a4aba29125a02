-- Image bytes can be objects in an S3-compatible store (FACESERVE_IMAGE_STORE=s3, media/objects.py): the
-- object's key is the row's file_path under FACESERVE_S3_PREFIX. Only widens what bytes_in accepts, so a
-- node of the release before keeps working on this database (it never writes 's3').
DO $$
DECLARE
    old_check text;
BEGIN
    -- whatever name the check got (0001 made it inline, or by ALTER on databases older than bytes_in)
    FOR old_check IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'face_session_images'::regclass AND contype = 'c'
          AND pg_get_constraintdef(oid) LIKE '%bytes_in%'
    LOOP
        EXECUTE format('ALTER TABLE face_session_images DROP CONSTRAINT %I', old_check);
    END LOOP;
END $$;
ALTER TABLE face_session_images ADD CONSTRAINT face_session_images_bytes_in_check
    CHECK (bytes_in IN ('file', 'postgres', 's3'));
