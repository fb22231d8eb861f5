-- +goose Up

-- The failed attempts at the event a projection is stuck on, kept with the
-- projection rather than in the memory of the instance that tried, so they
-- survive a change of owner and the poison policy applies in the end:
--
--   failing_event_id  the event the projection last failed on and has not
--                     passed since (NULL: none);
--   failed_attempts   how many times it failed, counted by every instance
--                     that held the lease;
--   last_error        its latest error (which a stall reports).
--
-- The instance holding the lease counts a failure (owner and epoch checked,
-- lease not expired); the batch that passes the event (applies or parks
-- it) clears them in its own transaction, with the checkpoint.
ALTER TABLE conduit.projections
    ADD COLUMN failing_event_id uuid,
    ADD COLUMN failed_attempts  integer NOT NULL DEFAULT 0 CHECK (failed_attempts >= 0),
    ADD COLUMN last_error       text;

-- A rebuild forgets the failures too: its replay tries every event afresh.
-- conduit.rebuild_projection always sets rebuild_started_at; a trigger
-- clears the failures then, so that function keeps its one definition.
-- +goose StatementBegin
CREATE FUNCTION conduit.forget_failed_attempts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.failing_event_id := NULL;
    NEW.failed_attempts := 0;
    NEW.last_error := NULL;
    RETURN NEW;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER projections_rebuild_forgets_failures
    BEFORE UPDATE OF rebuild_started_at ON conduit.projections
    FOR EACH ROW
    WHEN (NEW.rebuild_started_at IS NOT NULL AND NEW.rebuild_started_at IS DISTINCT FROM OLD.rebuild_started_at)
    EXECUTE FUNCTION conduit.forget_failed_attempts();

-- +goose Down
DROP TRIGGER projections_rebuild_forgets_failures ON conduit.projections;
DROP FUNCTION conduit.forget_failed_attempts();
ALTER TABLE conduit.projections
    DROP COLUMN last_error,
    DROP COLUMN failed_attempts,
    DROP COLUMN failing_event_id;
