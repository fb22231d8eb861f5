-- name: ProjectionRegister :exec
-- Creates the projection's row on first run; records its read tables.
INSERT INTO conduit.projections (name, read_tables)
VALUES (sqlc.arg(name), sqlc.arg(read_tables)::text[])
ON CONFLICT (name) DO UPDATE
   SET read_tables = EXCLUDED.read_tables, updated_at = now()
 WHERE conduit.projections.read_tables IS DISTINCT FROM EXCLUDED.read_tables;

-- name: ProjectionAcquire :one
-- Takes the lease if it is free or expired, bumping the epoch (the fencing
-- token). A row locked by a batch in flight is skipped, never waited for.
UPDATE conduit.projections
   SET owner = sqlc.arg(owner)::text,
       epoch = epoch + 1,
       lease_expires_at = now() + make_interval(secs => sqlc.arg(lease_seconds)::double precision),
       state = CASE WHEN state = 'stalled' THEN 'stalled' ELSE 'running' END,
       updated_at = now()
 WHERE name = (SELECT p.name FROM conduit.projections p
                WHERE p.name = sqlc.arg(name)
                  AND (p.owner IS NULL OR p.lease_expires_at < now())
                  FOR UPDATE SKIP LOCKED)
RETURNING epoch;

-- name: ProjectionRenew :one
-- Extends a held lease; no row means the lease was lost.
UPDATE conduit.projections
   SET lease_expires_at = now() + make_interval(secs => sqlc.arg(lease_seconds)::double precision)
 WHERE name = sqlc.arg(name) AND owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch)
   AND lease_expires_at > now()
RETURNING epoch;

-- name: ProjectionRelease :exec
UPDATE conduit.projections
   SET owner = NULL, lease_expires_at = NULL,
       state = CASE WHEN state = 'stalled' THEN 'stalled' ELSE 'stopped' END,
       updated_at = now()
 WHERE name = sqlc.arg(name) AND owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch);

-- name: ProjectionLockForBatch :one
-- Starts a batch: locks the row (a rebuild or a lease takeover waits for the
-- batch) and checks the lease; no row means the lease was lost. On the way
-- it bounds the batch's idle time to the lease (a paused owner's connection
-- is cut, releasing the lock for the next owner), turns synchronous_commit
-- off unless durable (see ProjectorConfig.DurableCommit) and says whether
-- parked events wait to be retried.
SELECT p.checkpoint_tx, p.checkpoint_position,
       set_config('idle_in_transaction_session_timeout', sqlc.arg(idle_timeout)::text, true) AS idle_timeout,
       set_config('synchronous_commit',
                  CASE WHEN sqlc.arg(durable)::boolean THEN current_setting('synchronous_commit') ELSE 'off' END,
                  true) AS synchronous_commit,
       EXISTS (SELECT 1 FROM conduit.parked_events pe
                WHERE pe.projection = p.name AND pe.status = 'retry') AS retry_pending
  FROM conduit.projections p
 WHERE p.name = sqlc.arg(name) AND p.owner = sqlc.arg(owner)::text AND p.epoch = sqlc.arg(epoch)
   AND p.lease_expires_at > now()
   FOR UPDATE OF p;

-- name: ProjectionCheckpointSave :one
-- Ends a batch, in its transaction: the checkpoint, the renewed lease and
-- the state. A rebuild's replay is over once the projection is caught up.
-- events_after: the batch caught up, yet committed events follow the
-- checkpoint: they wait behind the safe horizon (an older transaction,
-- which may append nothing and so wake nobody, is still open) or have just
-- committed, so the projector looks again soon rather than at its next poll.
-- (Testing the horizon instead would race with the batch's read.)
UPDATE conduit.projections
   SET checkpoint_tx = sqlc.arg(checkpoint_tx)::xid8,
       checkpoint_position = sqlc.arg(checkpoint_position),
       lease_expires_at = now() + make_interval(secs => sqlc.arg(lease_seconds)::double precision),
       events_applied = events_applied + sqlc.arg(applied)::bigint,
       last_progress_at = CASE WHEN sqlc.arg(applied)::bigint > 0 OR last_progress_at IS NULL
                               THEN now() ELSE last_progress_at END,
       state = CASE WHEN sqlc.arg(caught_up)::boolean THEN 'caught_up' ELSE 'running' END,
       rebuild_started_at = CASE WHEN sqlc.arg(caught_up)::boolean THEN NULL ELSE rebuild_started_at END,
       stall_reason = NULL, stalled_event_id = NULL,
       updated_at = now()
 WHERE name = sqlc.arg(name) AND owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch)
RETURNING (sqlc.arg(caught_up)::boolean AND EXISTS (
              SELECT 1 FROM conduit.events e
               WHERE (e.transaction_id, e.global_position) > (sqlc.arg(checkpoint_tx)::xid8, sqlc.arg(checkpoint_position)::bigint)))::boolean
          AS events_after;

-- name: ProjectionStall :exec
-- Reports a poison event under the stop policy; the checkpoint stays put.
UPDATE conduit.projections
   SET state = 'stalled', stall_reason = sqlc.arg(reason)::text, stalled_event_id = sqlc.arg(event_id)::uuid,
       updated_at = now()
 WHERE name = sqlc.arg(name) AND owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch);

-- name: ProjectionCheckpointGet :one
-- The checkpoint, and the stall that holds it back if any, in one round trip
-- (for WaitFor and CatchUp). NULLs become zero values.
SELECT checkpoint_tx, checkpoint_position, state,
       COALESCE(stall_reason, '')::text AS stall_reason,
       COALESCE(stalled_event_id, '00000000-0000-0000-0000-000000000000')::uuid AS stalled_event_id
  FROM conduit.projections
 WHERE name = sqlc.arg(name);

-- name: ProjectionRebuild :exec
SELECT conduit.rebuild_projection(sqlc.arg(name));

-- name: ProjectionStatusList :many
-- Every projection, or the one named. NULLs become zero values: the Go side reads a zero time as "never".
SELECT name::text AS name, state::text AS state, checkpoint_tx::bigint AS checkpoint_tx,
       checkpoint_position::bigint AS checkpoint_position, lag_events::bigint AS lag_events,
       lag_seconds::double precision AS lag_seconds,
       COALESCE(last_progress_at, '0001-01-01 00:00:00+00')::timestamptz AS last_progress_at,
       COALESCE(stall_reason, '')::text AS stall_reason,
       COALESCE(stalled_event_id, '00000000-0000-0000-0000-000000000000')::uuid AS stalled_event_id,
       parked_count::bigint AS parked_count, COALESCE(owner, '')::text AS owner, epoch::bigint AS epoch,
       COALESCE(lease_expires_at, '0001-01-01 00:00:00+00')::timestamptz AS lease_expires_at,
       events_applied::bigint AS events_applied,
       COALESCE(rebuild_started_at, '0001-01-01 00:00:00+00')::timestamptz AS rebuild_started_at,
       horizon_held_events::bigint AS horizon_held_events, COALESCE(horizon_pid, 0)::integer AS horizon_pid,
       COALESCE(horizon_since, '0001-01-01 00:00:00+00')::timestamptz AS horizon_since,
       COALESCE(horizon_application, '')::text AS horizon_application,
       COALESCE(horizon_query, '')::text AS horizon_query
  FROM conduit.projection_status()
 WHERE sqlc.narg(name)::text IS NULL OR name = sqlc.narg(name)::text;

-- name: TransactionIDsCheck :one
SELECT ok::boolean AS ok, COALESCE(max_stored, 0)::bigint AS max_stored, next_xid::bigint AS next_xid
  FROM conduit.check_transaction_ids();

-- name: EventListForProjection :many
-- EventListAll for a projector: data and metadata only for the event types it
-- handles (all when types is empty), so the others cost no transfer but
-- still advance the checkpoint.
SELECT global_position,
       transaction_id,
       stream_id, stream_version, event_id, event_type,
       (CASE WHEN cardinality(sqlc.arg(types)::text[]) = 0 OR event_type = ANY (sqlc.arg(types)::text[])
             THEN data END)::jsonb AS data,
       (CASE WHEN cardinality(sqlc.arg(types)::text[]) = 0 OR event_type = ANY (sqlc.arg(types)::text[])
             THEN metadata END)::jsonb AS metadata,
       recorded_at
  FROM conduit.events e
 WHERE (e.transaction_id, e.global_position) > (sqlc.arg(after_tx)::xid8, sqlc.arg(after_position)::bigint)
   AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
 -- Qualified: a bare transaction_id here would name the bigint output
 -- column, and the sort could not use the primary key.
 ORDER BY e.transaction_id, e.global_position
 LIMIT sqlc.arg(max_count);

-- name: NotifyEvents :exec
-- Wakes listening projectors after appends committed. Sent on its own, after
-- the appends' commits and coalesced, never inside an append's transaction
-- (a NOTIFY serializes committing transactions). Committed asynchronously:
-- the hint needs no durability.
SELECT set_config('synchronous_commit', 'off', true), pg_notify('conduit_events', '');

-- name: ListenEvents :exec
LISTEN conduit_events;
