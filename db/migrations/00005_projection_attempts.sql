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

-- rebuild_projection as in migration 2, and a rebuild forgets the failures
-- too: the replay tries every event afresh.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.rebuild_projection(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tables text[];
BEGIN
    SELECT p.read_tables INTO v_tables
      FROM conduit.projections p
     WHERE p.name = p_name
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conduit: no projection named %', p_name
            USING ERRCODE = 'CDI02',
                  HINT = 'A projection is registered when its projector first runs; see conduit.projection_status.';
    END IF;
    IF cardinality(v_tables) > 0 THEN
        EXECUTE 'TRUNCATE ' || (SELECT string_agg(t::regclass::text, ', ') FROM unnest(v_tables) AS t);
    END IF;
    DELETE FROM conduit.parked_events WHERE projection = p_name;
    UPDATE conduit.projections
       SET checkpoint_tx = '0', checkpoint_position = 0, events_applied = 0,
           rebuild_started_at = now(), stall_reason = NULL, stalled_event_id = NULL,
           failing_event_id = NULL, failed_attempts = 0, last_error = NULL,
           state = CASE WHEN state = 'stalled' THEN 'running' ELSE state END,
           updated_at = now()
     WHERE name = p_name;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.rebuild_projection(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tables text[];
BEGIN
    SELECT p.read_tables INTO v_tables
      FROM conduit.projections p
     WHERE p.name = p_name
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conduit: no projection named %', p_name
            USING ERRCODE = 'CDI02',
                  HINT = 'A projection is registered when its projector first runs; see conduit.projection_status.';
    END IF;
    IF cardinality(v_tables) > 0 THEN
        EXECUTE 'TRUNCATE ' || (SELECT string_agg(t::regclass::text, ', ') FROM unnest(v_tables) AS t);
    END IF;
    DELETE FROM conduit.parked_events WHERE projection = p_name;
    UPDATE conduit.projections
       SET checkpoint_tx = '0', checkpoint_position = 0, events_applied = 0,
           rebuild_started_at = now(), stall_reason = NULL, stalled_event_id = NULL,
           state = CASE WHEN state = 'stalled' THEN 'running' ELSE state END,
           updated_at = now()
     WHERE name = p_name;
END
$$;
-- +goose StatementEnd
ALTER TABLE conduit.projections
    DROP COLUMN last_error,
    DROP COLUMN failed_attempts,
    DROP COLUMN failing_event_id;
