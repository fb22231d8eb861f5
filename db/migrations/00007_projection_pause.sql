-- +goose Up

-- Pausing a projection: while paused_at is set, no instance applies
-- anything (each batch checks it under the batch's lock on the row), and
-- status says 'paused'; instances keep their lease, so the owner that
-- resumes is the one that paused. A rebuild of a paused projection
-- truncates and resets, and its replay waits for the resume.
ALTER TABLE conduit.projections ADD COLUMN paused_at timestamptz;

-- pause_projection pauses a projection. It first locks the projection's
-- row, as rebuild_projection does, so it waits for a batch in flight to
-- commit: once it returns, nothing more is applied until
-- conduit.resume_projection. Pausing a paused projection keeps its first
-- paused_at.
--
--   SELECT conduit.pause_projection('order_totals');
--
-- Like every function, it runs with the caller's rights: only a role that
-- may UPDATE conduit.projections (the owner, and the application role of
-- conduit.grant_application) can pause, so it needs no grant of its own.
-- +goose StatementBegin
CREATE FUNCTION conduit.pause_projection(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM conduit.projections p WHERE p.name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conduit: no projection named %', p_name
            USING ERRCODE = 'CDI02',
                  HINT = 'A projection is registered when its projector first runs; see conduit.projection_status.';
    END IF;
    UPDATE conduit.projections
       SET paused_at = COALESCE(paused_at, now()), updated_at = now()
     WHERE name = p_name;
END
$$;
-- +goose StatementEnd

-- resume_projection resumes a paused projection (a running one stays as it
-- is) and wakes the projectors that listen, after its commit.
--
--   SELECT conduit.resume_projection('order_totals');
-- +goose StatementBegin
CREATE FUNCTION conduit.resume_projection(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conduit.projections SET paused_at = NULL, updated_at = now() WHERE name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conduit: no projection named %', p_name
            USING ERRCODE = 'CDI02',
                  HINT = 'A projection is registered when its projector first runs; see conduit.projection_status.';
    END IF;
    PERFORM pg_notify('conduit_events', '');
END
$$;
-- +goose StatementEnd

-- projection_status says 'paused' for a paused projection, whatever its
-- stored state. Migration 2's version computes the rest, kept under
-- another name so that migrating down restores it without a second copy.
ALTER FUNCTION conduit.projection_status() RENAME TO projection_status_00002;
COMMENT ON FUNCTION conduit.projection_status_00002() IS
    'Migration 2''s conduit.projection_status: called by the current one, and kept so that migrating below version 7 restores it.';
-- (OR REPLACE only for sqlc, which does not follow the rename.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.projection_status()
RETURNS TABLE (name text, state text, checkpoint_tx bigint, checkpoint_position bigint,
               lag_events bigint, lag_seconds double precision, last_progress_at timestamptz,
               stall_reason text, stalled_event_id uuid, parked_count bigint, owner text, epoch bigint,
               lease_expires_at timestamptz, events_applied bigint, rebuild_started_at timestamptz,
               horizon_held_events bigint, horizon_pid integer, horizon_since timestamptz,
               horizon_application text, horizon_query text)
LANGUAGE sql STABLE AS $$
SELECT s.name,
       CASE WHEN p.paused_at IS NOT NULL THEN 'paused' ELSE s.state END,
       s.checkpoint_tx, s.checkpoint_position, s.lag_events, s.lag_seconds, s.last_progress_at,
       s.stall_reason, s.stalled_event_id, s.parked_count, s.owner, s.epoch, s.lease_expires_at,
       s.events_applied, s.rebuild_started_at, s.horizon_held_events, s.horizon_pid, s.horizon_since,
       s.horizon_application, s.horizon_query
  FROM conduit.projection_status_00002() s
  JOIN conduit.projections p ON p.name = s.name
 ORDER BY s.name;
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION conduit.projection_status();
ALTER FUNCTION conduit.projection_status_00002() RENAME TO projection_status;
COMMENT ON FUNCTION conduit.projection_status() IS NULL;
DROP FUNCTION conduit.resume_projection(text);
DROP FUNCTION conduit.pause_projection(text);
ALTER TABLE conduit.projections DROP COLUMN paused_at;
