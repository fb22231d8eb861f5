-- name: ParkedEventInsert :exec
INSERT INTO conduit.parked_events
       (projection, event_id, transaction_id, global_position, stream_id, stream_version, event_type, error, attempts)
VALUES (sqlc.arg(projection), sqlc.arg(event_id), sqlc.arg(transaction_id)::xid8,
        sqlc.arg(global_position), sqlc.arg(stream_id), sqlc.arg(stream_version), sqlc.arg(event_type),
        sqlc.arg(error), sqlc.arg(attempts))
ON CONFLICT (projection, event_id) DO UPDATE
   SET status = 'parked', error = EXCLUDED.error, attempts = conduit.parked_events.attempts + EXCLUDED.attempts,
       updated_at = now();

-- name: ParkedEventList :many
SELECT projection, event_id, transaction_id, global_position,
       stream_id, stream_version, event_type, error, attempts, status, parked_at, updated_at
  FROM conduit.parked_events pe
 WHERE pe.projection = sqlc.arg(projection)
 ORDER BY pe.transaction_id, pe.global_position;

-- name: ParkedEventRetryList :many
-- Parked events asked to be retried, with their data, for the active batch.
SELECT e.global_position, e.transaction_id,
       e.stream_id, e.stream_version, e.event_id, e.event_type, e.data, e.metadata, e.recorded_at
  FROM conduit.parked_events pe
  JOIN conduit.events e ON e.event_id = pe.event_id
 WHERE pe.projection = sqlc.arg(projection) AND pe.status = 'retry'
 ORDER BY e.transaction_id, e.global_position;

-- name: ParkedEventDelete :exec
DELETE FROM conduit.parked_events WHERE projection = sqlc.arg(projection) AND event_id = sqlc.arg(event_id);

-- name: ParkedEventRetry :one
SELECT COALESCE(conduit.retry_parked_event(sqlc.arg(projection), sqlc.arg(event_id)), false)::boolean AS found;

-- name: ParkedEventSkip :one
SELECT COALESCE(conduit.skip_parked_event(sqlc.arg(projection), sqlc.arg(event_id)), false)::boolean AS found;
