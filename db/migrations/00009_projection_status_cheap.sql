-- +goose Up

-- projection_status answers in milliseconds at any lag. Migration 2's
-- version counts every event past each checkpoint, so its cost grows with
-- the lag (seconds at ten million events behind). This one counts at most
-- 10,001 events past the checkpoint, on the primary key: lag_events is that
-- count, exact (lag_exact), when the projection is at most 10,000 events
-- behind; further behind it is estimated from the global positions of the
-- log's head and of the checkpoint (positions skipped by rolled-back
-- appends make it a little high), and lag_exact is false. lag_seconds is the
-- age of the oldest of the counted events, and horizon_held_events counts
-- held events up to 10,001 likewise. Every other column is as before.
--
-- Migration 2's version is kept under another name, so that migrating below
-- version 9 restores it without a second copy of its text. It cannot be
-- wrapped: its count is the cost this version removes.
ALTER FUNCTION conduit.projection_status() RENAME TO projection_status_00002;
COMMENT ON FUNCTION conduit.projection_status_00002() IS
    'Migration 2''s conduit.projection_status: kept so that migrating below version 9 restores it.';
REVOKE EXECUTE ON FUNCTION conduit.projection_status_00002() FROM PUBLIC;
-- (OR REPLACE only for sqlc, which does not follow the rename.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.projection_status()
RETURNS TABLE (name text, state text, checkpoint_tx bigint, checkpoint_position bigint,
               lag_events bigint, lag_seconds double precision, last_progress_at timestamptz,
               stall_reason text, stalled_event_id uuid, parked_count bigint, owner text, epoch bigint,
               lease_expires_at timestamptz, events_applied bigint, rebuild_started_at timestamptz,
               horizon_held_events bigint, horizon_pid integer, horizon_since timestamptz,
               horizon_application text, horizon_query text, lag_exact boolean)
LANGUAGE sql STABLE
-- Its plan's estimates scale with the log; the work does not: no JIT.
SET jit = off
AS $$
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
head AS (
    SELECT e.global_position
      FROM conduit.events e
     ORDER BY e.transaction_id DESC, e.global_position DESC
     LIMIT 1)
SELECT p.name,
       CASE
           WHEN p.state = 'stalled' THEN 'stalled'
           WHEN p.owner IS NULL OR p.lease_expires_at < now() THEN 'stopped'
           WHEN p.rebuild_started_at IS NOT NULL THEN 'rebuilding'
           ELSE p.state
       END,
       p.checkpoint_tx::text::bigint,
       p.checkpoint_position,
       CASE WHEN lag.events <= 10000 THEN lag.events
            ELSE GREATEST(lag.events, (SELECT h.global_position FROM head h) - p.checkpoint_position)
       END,
       COALESCE(extract(epoch FROM now() - lag.oldest), 0)::double precision,
       p.last_progress_at,
       p.stall_reason,
       p.stalled_event_id,
       (SELECT count(*) FROM conduit.parked_events pe
         WHERE pe.projection = p.name AND pe.status IN ('parked', 'retry')),
       p.owner,
       p.epoch,
       p.lease_expires_at,
       p.events_applied,
       p.rebuild_started_at,
       held.events,
       h.pid,
       h.xact_start,
       h.application_name,
       h.query,
       lag.events <= 10000
  FROM conduit.projections p
 CROSS JOIN LATERAL (
       SELECT count(*) AS events, min(c.recorded_at) AS oldest
         FROM (SELECT e.recorded_at
                 FROM conduit.events e
                WHERE (e.transaction_id, e.global_position) > (p.checkpoint_tx, p.checkpoint_position)
                ORDER BY e.transaction_id, e.global_position
                LIMIT 10001) c) lag
 CROSS JOIN LATERAL (
       -- Past the checkpoint and at or above the horizon, as one bound
       -- (two, and the scan would start at the checkpoint and filter).
       SELECT count(*) AS events
         FROM (SELECT 1
                 FROM conduit.events e, horizon
                WHERE (e.transaction_id, e.global_position) >
                      (CASE WHEN p.checkpoint_tx >= horizon.xmin THEN p.checkpoint_tx ELSE horizon.xmin END,
                       CASE WHEN p.checkpoint_tx >= horizon.xmin THEN p.checkpoint_position ELSE 0 END)
                LIMIT 10001) c) held
  LEFT JOIN LATERAL (
       SELECT a.pid, a.xact_start, a.application_name, left(a.query, 500) AS query
         FROM pg_stat_activity a
        WHERE held.events > 0 AND a.backend_xid IS NOT NULL
        ORDER BY age(a.backend_xid) DESC
        LIMIT 1) h ON true
 ORDER BY p.name;
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION conduit.projection_status();
ALTER FUNCTION conduit.projection_status_00002() RENAME TO projection_status;
COMMENT ON FUNCTION conduit.projection_status() IS NULL;
GRANT EXECUTE ON FUNCTION conduit.projection_status() TO PUBLIC;
