-- name: EventAppendExplain :many
-- Why an append wrote nothing: a conflict, an idempotent retry (one row per
-- stored event), or 'ok' when a concurrent append took the version
-- meanwhile. See conduit.explain_append.
SELECT r_status::text AS status,
       COALESCE(r_stream_version, 0)::bigint AS stream_version,
       COALESCE(r_transaction_id, '0')::xid8 AS transaction_id,
       COALESCE(r_global_position, 0)::bigint AS global_position,
       COALESCE(r_recorded_at, 'epoch')::timestamptz AS recorded_at,
       COALESCE(r_conflict_event_id, '00000000-0000-0000-0000-000000000000')::uuid AS conflict_event_id,
       COALESCE(r_conflict_stream, '')::text AS conflict_stream
  FROM conduit.explain_append(sqlc.arg(stream_id)::text, sqlc.arg(expected)::bigint,
                              sqlc.arg(event_ids)::text[]::uuid[]);

-- name: EventAppendOne :one
-- An append of one event in one plain statement, for Append in a
-- transaction of its own. Under the stream's lock (see
-- conduit.append_stream_lock) it inserts the event after the stream's last
-- where conduit.append_verdict says 'ok', and returns its row; otherwise it
-- inserts nothing and returns no row, and the caller asks
-- conduit.explain_append why. With Exactly(n) or NoStream an idempotent
-- retry already fails the version check; only Any and StreamExists need to
-- look the id up (a reused id elsewhere is stopped by the unique index).
-- When the lock was granted only after another append committed, the head
-- read is stale and the insert fails on UNIQUE (stream_id, stream_version):
-- the caller, owning the transaction, appends again. (ON CONFLICT would
-- avoid the error but costs every append a speculative insertion: about
-- 10% of throughput at 32 writers; EventAppendTx pays it where an error
-- would abort the caller's transaction.)
WITH lock AS MATERIALIZED (SELECT conduit.append_stream_lock(sqlc.arg(stream_id)::text) AS locked),
head AS (SELECT h.version, h.last_tx AS tx FROM lock, conduit.stream_head(sqlc.arg(stream_id)::text, lock.locked) AS h(version, last_tx))
INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
SELECT sqlc.arg(stream_id)::text, head.version + 1, sqlc.arg(event_id)::text::uuid, sqlc.arg(event_type)::text,
       sqlc.arg(data)::text::jsonb, NULLIF(sqlc.arg(metadata)::text, '')::jsonb
  FROM head
 WHERE conduit.append_verdict(sqlc.arg(expected)::bigint, head.version, head.tx,
           COALESCE(pg_current_xact_id_if_assigned(), pg_snapshot_xmax(pg_current_snapshot()))) = 'ok'
   AND (sqlc.arg(expected)::bigint >= 0 OR sqlc.arg(expected)::bigint = -2
        OR NOT EXISTS (SELECT 1 FROM conduit.events x WHERE x.event_id = sqlc.arg(event_id)::text::uuid))
RETURNING e.stream_version, e.transaction_id, e.global_position, e.recorded_at;

-- name: EventAppendMany :many
-- EventAppendOne for several events, from arrays, in one statement. Rows
-- come newest first: all of them when every_row (synchronous projections
-- need them), else just the last.
WITH lock AS MATERIALIZED (SELECT conduit.append_stream_lock(sqlc.arg(stream_id)::text) AS locked),
head AS (SELECT h.version, h.last_tx AS tx FROM lock, conduit.stream_head(sqlc.arg(stream_id)::text, lock.locked) AS h(version, last_tx)), ins AS (
INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
SELECT sqlc.arg(stream_id)::text, head.version + u.ord, u.id::uuid, u.typ, u.dat::jsonb, NULLIF(u.meta, '')::jsonb
  FROM head,
       ROWS FROM (unnest(sqlc.arg(event_ids)::text[]), unnest(sqlc.arg(types)::text[]),
                  unnest(sqlc.arg(data)::text[]), unnest(sqlc.arg(metadata)::text[]))
           WITH ORDINALITY AS u(id, typ, dat, meta, ord)
 WHERE conduit.append_verdict(sqlc.arg(expected)::bigint, head.version, head.tx,
           COALESCE(pg_current_xact_id_if_assigned(), pg_snapshot_xmax(pg_current_snapshot()))) = 'ok'
   AND (sqlc.arg(expected)::bigint >= 0 OR sqlc.arg(expected)::bigint = -2
        OR NOT EXISTS (SELECT 1 FROM conduit.events x WHERE x.event_id = (sqlc.arg(event_ids)::text[])[1]::uuid))
 ORDER BY u.ord
RETURNING e.stream_version, e.transaction_id, e.global_position, e.recorded_at
)
SELECT ins.stream_version, ins.transaction_id, ins.global_position, ins.recorded_at
  FROM ins
 ORDER BY ins.stream_version DESC
 LIMIT CASE WHEN sqlc.arg(every_row)::boolean THEN NULL ELSE 1 END;

-- name: EventAppendTx :many
-- EventAppendMany for AppendTx, in the caller's transaction, where a unique
-- violation would abort that transaction: the first event goes in alone, ON
-- CONFLICT DO NOTHING on the stream's version, and the others only after
-- it, so a stale head read (the lock was granted after another append
-- committed) writes nothing instead, and the caller asks
-- conduit.explain_append, which sees the new head.
WITH lock AS MATERIALIZED (SELECT conduit.append_stream_lock(sqlc.arg(stream_id)::text) AS locked),
head AS (SELECT h.version, h.last_tx AS tx FROM lock, conduit.stream_head(sqlc.arg(stream_id)::text, lock.locked) AS h(version, last_tx)),
first AS (
INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
SELECT sqlc.arg(stream_id)::text, head.version + 1, (sqlc.arg(event_ids)::text[])[1]::uuid,
       (sqlc.arg(types)::text[])[1], (sqlc.arg(data)::text[])[1]::jsonb,
       NULLIF((sqlc.arg(metadata)::text[])[1], '')::jsonb
  FROM head
 WHERE conduit.append_verdict(sqlc.arg(expected)::bigint, head.version, head.tx,
           COALESCE(pg_current_xact_id_if_assigned(), pg_snapshot_xmax(pg_current_snapshot()))) = 'ok'
   AND (sqlc.arg(expected)::bigint >= 0 OR sqlc.arg(expected)::bigint = -2
        OR NOT EXISTS (SELECT 1 FROM conduit.events x WHERE x.event_id = (sqlc.arg(event_ids)::text[])[1]::uuid))
ON CONFLICT (stream_id, stream_version) DO NOTHING
RETURNING e.stream_version, e.transaction_id, e.global_position, e.recorded_at
), rest AS (
INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
SELECT sqlc.arg(stream_id)::text, first.stream_version + u.ord - 1, u.id::uuid, u.typ, u.dat::jsonb,
       NULLIF(u.meta, '')::jsonb
  FROM first,
       ROWS FROM (unnest(sqlc.arg(event_ids)::text[]), unnest(sqlc.arg(types)::text[]),
                  unnest(sqlc.arg(data)::text[]), unnest(sqlc.arg(metadata)::text[]))
           WITH ORDINALITY AS u(id, typ, dat, meta, ord)
 WHERE u.ord > 1
 ORDER BY u.ord
RETURNING e.stream_version, e.transaction_id, e.global_position, e.recorded_at
)
SELECT ins.stream_version, ins.transaction_id, ins.global_position, ins.recorded_at
  FROM (SELECT * FROM first UNION ALL SELECT * FROM rest) AS ins
 ORDER BY ins.stream_version DESC
 LIMIT CASE WHEN sqlc.arg(every_row)::boolean THEN NULL ELSE 1 END;

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
   -- Evaluated once per statement: fails (CDI04) on a database restored
   -- from a logical dump, where the horizon is below every stored event.
   AND conduit.assert_transaction_ids()
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

-- name: EventLocateAny :one
-- The first of an append's ids that is stored, and where, to explain a
-- reused id found by the unique index.
SELECT e.event_id, e.stream_id, e.stream_version
  FROM unnest(sqlc.arg(event_ids)::uuid[]) WITH ORDINALITY AS u(id, ord)
  JOIN conduit.events e ON e.event_id = u.id
 ORDER BY u.ord
 LIMIT 1;
