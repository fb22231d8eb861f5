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
-- Extends the lease while owner and epoch hold it (no row: it was taken or
-- released). A lease that expired without anyone taking it over is
-- extended too: the epoch fences, and an owner whose renewals were late
-- keeps its work. While a batch applies events (applying), a projection
-- whose last batch had caught up reads as running again, unless that batch
-- has committed meanwhile (the checkpoint moved on from
-- from_tx/from_position): its own state stands. Committed without waiting
-- for the WAL flush: a renewal lost in a crash only lets the lease expire.
UPDATE conduit.projections
   SET lease_expires_at = now() + make_interval(secs => sqlc.arg(lease_seconds)::double precision),
       state = CASE WHEN sqlc.arg(applying)::boolean AND state = 'caught_up'
                         AND checkpoint_tx = sqlc.arg(from_tx)::xid8
                         AND checkpoint_position = sqlc.arg(from_position)::bigint
                    THEN 'running' ELSE state END
  FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
 WHERE name = sqlc.arg(name) AND owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch)
RETURNING epoch;

-- name: ProjectionRelease :exec
UPDATE conduit.projections
   SET owner = NULL, lease_expires_at = NULL,
       state = CASE WHEN state = 'stalled' THEN 'stalled' ELSE 'stopped' END,
       updated_at = now()
 WHERE name = sqlc.arg(name) AND owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch);

-- name: ProjectionLockForBatch :one
-- Starts a batch: locks the row and checks the lease; no row means the lease
-- was lost. The lock is FOR KEY SHARE: a rebuild (FOR UPDATE) and a lease
-- takeover (FOR UPDATE SKIP LOCKED) wait for the batch or pass it by, while
-- the owner's lease keeper can still renew the lease and count a failure
-- (plain UPDATEs of non-key columns) from its own connection. On the way it
-- bounds the time the batch's transaction may sit idle (a paused owner's
-- connection is cut, releasing the lock for the next owner; see
-- ProjectorConfig.HandlerTimeout), turns synchronous_commit off unless
-- durable (see ProjectorConfig.DurableCommit) and says whether parked
-- events wait to be retried, and whether the projection is paused (the
-- batch then applies nothing: conduit.pause_projection waits for the
-- batch's lock, and a batch that starts after it sees it). It also returns the event the projection is
-- failing on, if any, with its failed attempts so far.
SELECT p.checkpoint_tx, p.checkpoint_position, p.state,
       COALESCE(p.stalled_event_id, '00000000-0000-0000-0000-000000000000')::uuid AS stalled_event_id,
       COALESCE(p.stall_reason, '')::text AS stall_reason,
       COALESCE(p.failing_event_id, '00000000-0000-0000-0000-000000000000')::uuid AS failing_event_id,
       p.failed_attempts, COALESCE(p.last_error, '')::text AS last_error,
       set_config('idle_in_transaction_session_timeout', sqlc.arg(idle_timeout)::text, true) AS idle_timeout,
       set_config('synchronous_commit',
                  CASE WHEN sqlc.arg(durable)::boolean THEN current_setting('synchronous_commit') ELSE 'off' END,
                  true) AS synchronous_commit,
       EXISTS (SELECT 1 FROM conduit.parked_events pe
                WHERE pe.projection = p.name AND pe.status = 'retry') AS retry_pending,
       (p.paused_at IS NOT NULL)::boolean AS paused,
       (p.shadow_tables IS NOT NULL)::boolean AS shadow_active,
       p.shadow_checkpoint_tx, p.shadow_checkpoint_position,
       p.read_tables, COALESCE(p.shadow_tables, '{}')::text[] AS shadow_tables
  FROM conduit.projections p
 WHERE p.name = sqlc.arg(name) AND p.owner = sqlc.arg(owner)::text AND p.epoch = sqlc.arg(epoch)
   AND p.lease_expires_at > now()
   FOR KEY SHARE OF p;

-- name: ProjectionCheckpointSave :one
-- Ends a batch, in its transaction: the checkpoint, the renewed lease and
-- the state. A rebuild's replay is over once the projection is caught up.
-- Fenced: when the lease is no longer (owner, epoch)'s it raises CDI06
-- (conduit.lease_lost, migration 12) rather than returning no row, because
-- the batch sends its COMMIT in the same round trip (see
-- dbgen.ProjectionCheckpointSaveCommit).
-- passed_failing: the batch applied or parked the event the projection was
-- failing on, whose failures are then forgotten.
-- events_after: the batch caught up, yet committed events follow the
-- checkpoint: they wait behind the safe horizon (an older transaction,
-- which may append nothing and so wake nobody, is still open) or have just
-- committed, so the projector looks again soon rather than at its next poll.
-- (Testing the horizon instead would race with the batch's read.)
WITH saved AS (
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
       failing_event_id = CASE WHEN sqlc.arg(passed_failing)::boolean THEN NULL ELSE failing_event_id END,
       failed_attempts = CASE WHEN sqlc.arg(passed_failing)::boolean THEN 0 ELSE failed_attempts END,
       last_error = CASE WHEN sqlc.arg(passed_failing)::boolean THEN NULL ELSE last_error END,
       updated_at = now()
 WHERE name = sqlc.arg(name) AND owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch)
RETURNING (sqlc.arg(caught_up)::boolean AND (
              -- The first event after the checkpoint, by the index, not
              -- EXISTS: the generic plan of an EXISTS over this row
              -- comparison is a sequential scan from the log's first event
              -- (see OutboxAfter).
              SELECT true FROM conduit.events e
               WHERE (e.transaction_id, e.global_position) > (sqlc.arg(checkpoint_tx)::xid8, sqlc.arg(checkpoint_position)::bigint)
               ORDER BY e.transaction_id, e.global_position
               LIMIT 1) IS NOT NULL)::boolean
          AS events_after
)
SELECT COALESCE((SELECT s.events_after FROM saved AS s),
                conduit.lease_lost('projection', sqlc.arg(name)::text))::boolean AS events_after;

-- name: ProjectionStall :exec
-- Reports a poison event under the stop policy; the checkpoint stays put.
UPDATE conduit.projections
   SET state = 'stalled', stall_reason = sqlc.arg(reason)::text, stalled_event_id = sqlc.arg(event_id)::uuid,
       updated_at = now()
 WHERE name = sqlc.arg(name) AND owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch);

-- name: ProjectionFailureCount :one
-- Counts a failed attempt at an event, for the instance holding the lease
-- (no row: it does not): the count survives a change of owner. A failure at
-- another event than the one counted so far starts a new count.
UPDATE conduit.projections
   SET failed_attempts = CASE WHEN failing_event_id = sqlc.arg(event_id)::uuid THEN failed_attempts + 1 ELSE 1 END,
       failing_event_id = sqlc.arg(event_id)::uuid,
       last_error = sqlc.arg(error)::text,
       updated_at = now()
 WHERE name = sqlc.arg(name) AND owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch)
   AND lease_expires_at > now()
RETURNING failed_attempts;

-- name: ProjectionCheckpointGet :one
-- The checkpoint, and the stall or pause that holds it back if any, in one round trip
-- (for WaitFor and CatchUp). NULLs become zero values.
SELECT checkpoint_tx, checkpoint_position, state,
       COALESCE(stall_reason, '')::text AS stall_reason,
       COALESCE(stalled_event_id, '00000000-0000-0000-0000-000000000000')::uuid AS stalled_event_id,
       (paused_at IS NOT NULL)::boolean AS paused
  FROM conduit.projections
 WHERE name = sqlc.arg(name);

-- name: ProjectionRebuild :exec
SELECT conduit.rebuild_projection(sqlc.arg(name));

-- name: ProjectionPause :exec
SELECT conduit.pause_projection(sqlc.arg(name));

-- name: ProjectionResume :exec
SELECT conduit.resume_projection(sqlc.arg(name));

-- name: ProjectionRebuildOnline :exec
SELECT conduit.rebuild_projection_online(sqlc.arg(name));

-- name: ProjectionCheckOnline :exec
-- Raises CDI05 when the calling role cannot rebuild the projection online.
SELECT conduit.check_online_rebuild(sqlc.arg(name));

-- name: ProjectionShadowCheckpointSave :one
-- Ends a shadow batch of an online rebuild, in its transaction (no row:
-- the lease was lost, or the online rebuild was cancelled or restarted).
UPDATE conduit.projections
   SET shadow_checkpoint_tx = sqlc.arg(checkpoint_tx)::xid8,
       shadow_checkpoint_position = sqlc.arg(checkpoint_position),
       shadow_events_applied = shadow_events_applied + sqlc.arg(applied)::bigint,
       shadow_error = NULL, updated_at = now()
 WHERE name = sqlc.arg(name) AND owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch)
   AND shadow_tables = sqlc.arg(shadow_tables)::text[]
RETURNING epoch;

-- name: ProjectionShadowFailed :exec
-- Records why a shadow batch failed; the live projection goes on.
UPDATE conduit.projections
   SET shadow_error = sqlc.arg(error)::text, updated_at = now()
 WHERE name = sqlc.arg(name) AND owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch)
   AND shadow_tables IS NOT NULL;

-- name: ProjectionShadowSwap :exec
-- Swaps the shadow tables in, in the shadow batch's transaction; a reader
-- holding a live table longer than lock_timeout fails the swap (retried).
SELECT set_config('lock_timeout', sqlc.arg(lock_timeout)::text, true), conduit.swap_shadow_tables(sqlc.arg(name));

-- name: ProjectionStatusList :many
-- Every projection, or the one named. NULLs become zero values: the Go side reads a zero time as "never".
-- The failure columns come from the table (conduit.projection_status() predates them).
SELECT s.name::text AS name, s.state::text AS state, s.checkpoint_tx::bigint AS checkpoint_tx,
       s.checkpoint_position::bigint AS checkpoint_position, s.lag_events::bigint AS lag_events,
       s.lag_seconds::double precision AS lag_seconds,
       COALESCE(s.last_progress_at, '0001-01-01 00:00:00+00')::timestamptz AS last_progress_at,
       COALESCE(s.stall_reason, '')::text AS stall_reason,
       COALESCE(s.stalled_event_id, '00000000-0000-0000-0000-000000000000')::uuid AS stalled_event_id,
       s.parked_count::bigint AS parked_count, COALESCE(s.owner, '')::text AS owner, s.epoch::bigint AS epoch,
       COALESCE(s.lease_expires_at, '0001-01-01 00:00:00+00')::timestamptz AS lease_expires_at,
       s.events_applied::bigint AS events_applied,
       COALESCE(s.rebuild_started_at, '0001-01-01 00:00:00+00')::timestamptz AS rebuild_started_at,
       s.horizon_held_events::bigint AS horizon_held_events, COALESCE(s.horizon_pid, 0)::integer AS horizon_pid,
       COALESCE(s.horizon_since, '0001-01-01 00:00:00+00')::timestamptz AS horizon_since,
       COALESCE(s.horizon_application, '')::text AS horizon_application,
       COALESCE(s.horizon_query, '')::text AS horizon_query,
       (NOT s.lag_exact)::boolean AS lag_estimated,
       COALESCE(p.failing_event_id, '00000000-0000-0000-0000-000000000000')::uuid AS failing_event_id,
       COALESCE(p.failed_attempts, 0)::integer AS failed_attempts,
       COALESCE(p.last_error, '')::text AS last_error,
       COALESCE(p.paused_at, '0001-01-01 00:00:00+00')::timestamptz AS paused_at,
       COALESCE(s.online_rebuild_started_at, '0001-01-01 00:00:00+00')::timestamptz AS online_rebuild_started_at,
       COALESCE(s.online_rebuild_replayed, 0)::bigint AS online_rebuild_replayed,
       COALESCE(s.online_rebuild_events_per_second, 0)::double precision AS online_rebuild_events_per_second,
       COALESCE(s.online_rebuild_seconds_left, -1)::double precision AS online_rebuild_seconds_left,
       COALESCE(s.online_rebuild_error, '')::text AS online_rebuild_error
  FROM conduit.projection_status() s
  LEFT JOIN conduit.projections p ON p.name = s.name
 WHERE sqlc.narg(name)::text IS NULL OR s.name = sqlc.narg(name)::text
 ORDER BY s.name;

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

-- name: EventListForProjectionSkip :many
-- EventListForProjection after skipping skip events: a projector reading
-- ahead on two connections at once reads, beside the statement for the
-- events after a position, the ones after those (skip = that statement's
-- max_count). Both see the events below their own safe horizon; the
-- events below the lower one are a prefix of those below the higher, in
-- this order, so the two line up whenever the first comes back full.
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
 ORDER BY e.transaction_id, e.global_position
 LIMIT sqlc.arg(max_count) OFFSET sqlc.arg(skip);

-- name: NotifyEvents :exec
-- Wakes listening projectors after appends committed. Sent on its own, after
-- the appends' commits and coalesced, never inside an append's transaction
-- (a NOTIFY serializes committing transactions). Committed asynchronously:
-- the hint needs no durability.
SELECT set_config('synchronous_commit', 'off', true), pg_notify('conduit_events', '');

-- name: ListenEvents :exec
LISTEN conduit_events;
