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
       sqlc.arg(event_ids)::text[]::uuid[],
       sqlc.arg(types)::text[],
       sqlc.arg(data)::text[],
       sqlc.arg(metadata)::text[]);

-- name: EventAppendFast :many
-- The common case of an append in one plain statement: when the expected
-- version holds, the first event id is unused and the transaction order
-- holds (see conduit.append_to_stream), it inserts and returns one row per
-- event; otherwise it inserts nothing and returns no rows, and the caller
-- asks conduit.append_to_stream what happened (conflict, idempotent retry,
-- ...). The UNIQUE (stream_id, stream_version) constraint stops racing
-- appends that both pass the check. Rows come newest first: all of them
-- when every_row (synchronous projections need them), else just the last.
WITH head AS (
    SELECT COALESCE(last.stream_version, 0) AS version, last.transaction_id AS tx
      FROM (SELECT 1) AS one
      LEFT JOIN LATERAL (
            SELECT h.stream_version, h.transaction_id
              FROM conduit.events h
             WHERE h.stream_id = sqlc.arg(stream_id)::text
             ORDER BY h.stream_version DESC
             LIMIT 1) AS last ON true
), ins AS (
INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
SELECT sqlc.arg(stream_id)::text, head.version + u.ord, u.id::uuid, u.typ, u.dat::jsonb, NULLIF(u.meta, '')::jsonb
  FROM head,
       ROWS FROM (unnest(sqlc.arg(event_ids)::text[]), unnest(sqlc.arg(types)::text[]),
                  unnest(sqlc.arg(data)::text[]), unnest(sqlc.arg(metadata)::text[]))
           WITH ORDINALITY AS u(id, typ, dat, meta, ord)
 WHERE (sqlc.arg(expected)::bigint = -1
        OR (sqlc.arg(expected)::bigint = -2 AND head.version = 0)
        OR (sqlc.arg(expected)::bigint = -3 AND head.version > 0)
        OR head.version = sqlc.arg(expected)::bigint)
   -- With Exactly(n) or NoStream an idempotent retry already fails the
   -- version check; only Any and StreamExists need to look the id up (a
   -- reused id elsewhere is still stopped by the unique index).
   AND (sqlc.arg(expected)::bigint >= 0 OR sqlc.arg(expected)::bigint = -2
        OR NOT EXISTS (SELECT 1 FROM conduit.events x WHERE x.event_id = (sqlc.arg(event_ids)::text[])[1]::uuid))
   AND (head.tx IS NULL OR head.tx <= pg_current_xact_id())
 ORDER BY u.ord
RETURNING e.stream_version, e.transaction_id, e.global_position, e.recorded_at
)
SELECT ins.stream_version, ins.transaction_id, ins.global_position, ins.recorded_at
  FROM ins
 ORDER BY ins.stream_version DESC
 LIMIT CASE WHEN sqlc.arg(every_row)::boolean THEN NULL ELSE 1 END;

-- name: EventAppendOne :one
-- EventAppendFast for a single event, with scalar parameters: no arrays to
-- unnest (each unnest materializes its rows), for the most common append.
WITH head AS (
    SELECT COALESCE(last.stream_version, 0) AS version, last.transaction_id AS tx
      FROM (SELECT 1) AS one
      LEFT JOIN LATERAL (
            SELECT h.stream_version, h.transaction_id
              FROM conduit.events h
             WHERE h.stream_id = sqlc.arg(stream_id)::text
             ORDER BY h.stream_version DESC
             LIMIT 1) AS last ON true
)
INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
SELECT sqlc.arg(stream_id)::text, head.version + 1, sqlc.arg(event_id)::text::uuid, sqlc.arg(event_type)::text,
       sqlc.arg(data)::text::jsonb, NULLIF(sqlc.arg(metadata)::text, '')::jsonb
  FROM head
 WHERE (sqlc.arg(expected)::bigint = -1
        OR (sqlc.arg(expected)::bigint = -2 AND head.version = 0)
        OR (sqlc.arg(expected)::bigint = -3 AND head.version > 0)
        OR head.version = sqlc.arg(expected)::bigint)
   AND (sqlc.arg(expected)::bigint >= 0 OR sqlc.arg(expected)::bigint = -2
        OR NOT EXISTS (SELECT 1 FROM conduit.events x WHERE x.event_id = sqlc.arg(event_id)::text::uuid))
   AND (head.tx IS NULL OR head.tx <= pg_current_xact_id())
RETURNING e.stream_version, e.transaction_id, e.global_position, e.recorded_at;

-- name: EventListByStream :many
SELECT global_position,
       transaction_id,
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
       transaction_id,
       stream_id, stream_version, event_id, event_type, data, metadata, recorded_at
  FROM conduit.events e
 WHERE (e.transaction_id, e.global_position) > (sqlc.arg(after_tx)::xid8, sqlc.arg(after_position)::bigint)
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

-- name: EventLocate :one
-- Where an event id is stored, to explain a duplicate id.
SELECT stream_id, stream_version FROM conduit.events WHERE event_id = sqlc.arg(event_id);
