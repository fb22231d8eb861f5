-- name: EventAppend :many
SELECT r_status::text AS status,
       COALESCE(r_stream_version, 0)::bigint AS stream_version,
       COALESCE(r_transaction_id, 0)::bigint AS transaction_id,
       COALESCE(r_global_position, 0)::bigint AS global_position,
       COALESCE(r_recorded_at, 'epoch')::timestamptz AS recorded_at,
       COALESCE(r_conflict_stream, '')::text AS conflict_stream
  FROM conduit.append_to_stream(
       sqlc.arg(stream_id)::text,
       sqlc.arg(expected)::bigint,
       sqlc.arg(event_ids)::uuid[],
       sqlc.arg(types)::text[],
       sqlc.arg(data)::text[],
       sqlc.arg(metadata)::text[]);

-- name: EventListByStream :many
SELECT global_position,
       transaction_id::text::bigint AS transaction_id,
       stream_id, stream_version, event_id, event_type, data, metadata, recorded_at
  FROM conduit.events
 WHERE stream_id = sqlc.arg(stream_id)
   AND stream_version >= sqlc.arg(from_version)
 ORDER BY stream_version
 LIMIT sqlc.arg(max_count);

-- name: EventListAll :many
-- Reads the global log after a position, below the safe horizon, in one
-- statement (one snapshot): rows of transactions still running, or of
-- transactions older than one still running, are never returned.
SELECT global_position,
       transaction_id::text::bigint AS transaction_id,
       stream_id, stream_version, event_id, event_type, data, metadata, recorded_at
  FROM conduit.events e
 WHERE (e.transaction_id, e.global_position) > (sqlc.arg(after_tx)::bigint::text::xid8, sqlc.arg(after_position)::bigint)
   AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
 -- Qualified: a bare transaction_id here would name the bigint output
 -- column, and the sort could not use the primary key.
 ORDER BY e.transaction_id, e.global_position
 LIMIT sqlc.arg(max_count);

-- name: StreamVersionGet :one
SELECT COALESCE((SELECT stream_version
                   FROM conduit.events
                  WHERE stream_id = sqlc.arg(stream_id)
                  ORDER BY stream_version DESC
                  LIMIT 1), 0)::bigint AS stream_version;

-- name: TransactionAbort :exec
SELECT conduit.abort_transaction(sqlc.arg(reason)::text);
