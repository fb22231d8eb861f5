-- name: OutboxEnqueue :one
-- Enqueues messages, from arrays, in the caller's transaction (or as one
-- statement of its own), in array order: positions are taken in that
-- order. headers are JSON objects as text, '' for none. It locks each key
-- until the transaction ends (the lock an append takes on a stream of that
-- name), so that two transactions enqueueing to one key go one after the
-- other, and refuses ('transaction_order', the key) a transaction that
-- wrote before and is older than one that enqueued to the key and
-- committed: see conduit.outbox_enqueue (migration 17).
SELECT r.r_status::text AS status, COALESCE(r.r_key, '')::text AS key
  FROM conduit.outbox_enqueue(sqlc.arg(message_ids)::text[]::uuid[], sqlc.arg(topics)::text[],
                              sqlc.arg(keys)::text[], sqlc.arg(payloads)::bytea[],
                              sqlc.arg(headers)::text[]) AS r;

-- name: EventAppendManyOutbox :many
-- EventAppendMany that also enqueues the messages the store's outbox rules
-- made of the events, in the same statement (one round trip, one implicit
-- transaction): they are inserted only if the events are. The generation
-- is read once per statement. It takes the messages' keys' locks with the
-- stream's, in hash order, as every append and enqueue takes them (see
-- migration 17): a key's messages keep the order of their commits.
WITH lock AS MATERIALIZED (
    SELECT bool_and(conduit.append_stream_lock(k.id)) AS locked
      FROM (SELECT DISTINCT ON (hashtext(u.id)) u.id
              FROM unnest(array_prepend(sqlc.arg(stream_id)::text, sqlc.arg(keys)::text[])) AS u(id)
             WHERE u.id <> ''
             ORDER BY hashtext(u.id), u.id) AS k),
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
), msg AS (
INSERT INTO conduit.outbox (generation, message_id, topic, key, payload, headers)
SELECT g.current, m.id::uuid, m.topic, m.key, m.payload, NULLIF(m.headers, '')::jsonb
  FROM (SELECT og.current FROM conduit.outbox_generation og) AS g,
       ROWS FROM (unnest(sqlc.arg(message_ids)::text[]), unnest(sqlc.arg(topics)::text[]),
                  unnest(sqlc.arg(keys)::text[]), unnest(sqlc.arg(payloads)::bytea[]),
                  unnest(sqlc.arg(headers)::text[]))
       WITH ORDINALITY AS m(id, topic, key, payload, headers, ord)
 WHERE EXISTS (SELECT 1 FROM ins)
 ORDER BY m.ord
)
SELECT ins.stream_version, ins.transaction_id, ins.global_position, ins.recorded_at
  FROM ins
 ORDER BY ins.stream_version DESC
 LIMIT CASE WHEN sqlc.arg(every_row)::boolean THEN NULL ELSE 1 END;

-- name: EventAppendOneOutbox :one
-- EventAppendOne that also enqueues one message (a Config.Outbox rule's),
-- in the same statement: inserted only if the event is. Single values, not
-- arrays: the common case of a rule, at the cost of one round trip. The
-- generation is read once per statement. It takes the message's key's lock
-- with the stream's, as EventAppendManyOutbox does.
WITH lock AS MATERIALIZED (
    SELECT bool_and(conduit.append_stream_lock(k.id)) AS locked
      FROM (SELECT DISTINCT ON (hashtext(u.id)) u.id
              FROM unnest(ARRAY[sqlc.arg(stream_id)::text, sqlc.arg(key)::text]) AS u(id)
             WHERE u.id <> ''
             ORDER BY hashtext(u.id), u.id) AS k),
head AS (SELECT h.version, h.last_tx AS tx FROM lock, conduit.stream_head(sqlc.arg(stream_id)::text, lock.locked) AS h(version, last_tx)), ins AS (
INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
SELECT sqlc.arg(stream_id)::text, head.version + 1, sqlc.arg(event_id)::text::uuid, sqlc.arg(event_type)::text,
       sqlc.arg(data)::text::jsonb, NULLIF(sqlc.arg(metadata)::text, '')::jsonb
  FROM head
 WHERE conduit.append_verdict(sqlc.arg(expected)::bigint, head.version, head.tx,
           COALESCE(pg_current_xact_id_if_assigned(), pg_snapshot_xmax(pg_current_snapshot()))) = 'ok'
   AND (sqlc.arg(expected)::bigint >= 0 OR sqlc.arg(expected)::bigint = -2
        OR NOT EXISTS (SELECT 1 FROM conduit.events x WHERE x.event_id = sqlc.arg(event_id)::text::uuid))
RETURNING e.stream_version, e.transaction_id, e.global_position, e.recorded_at
), msg AS (
INSERT INTO conduit.outbox (generation, message_id, topic, key, payload, headers)
SELECT (SELECT og.current FROM conduit.outbox_generation og), sqlc.arg(message_id)::text::uuid, sqlc.arg(topic)::text,
       sqlc.arg(key)::text, sqlc.arg(payload)::bytea, NULLIF(sqlc.arg(headers)::text, '')::jsonb
  FROM ins
)
SELECT ins.stream_version, ins.transaction_id, ins.global_position, ins.recorded_at FROM ins;

-- name: OutboxRelayAcquire :one
-- Takes the relay's lease if it is free or expired, bumping the epoch (the
-- fencing token). A row locked by a save in flight is skipped, never waited
-- for.
UPDATE conduit.outbox_relay
   SET owner = sqlc.arg(owner)::text,
       epoch = epoch + 1,
       lease_expires_at = now() + make_interval(secs => sqlc.arg(lease_seconds)::double precision),
       updated_at = now()
 WHERE only_row = (SELECT r.only_row FROM conduit.outbox_relay r
                    WHERE r.owner IS NULL OR r.lease_expires_at < now()
                      FOR UPDATE SKIP LOCKED)
RETURNING epoch;

-- name: OutboxRelayRenew :one
-- Extends the lease while owner and epoch hold it (no row: it was taken or
-- released). As a projector's, an expired lease nobody took over is
-- extended too: the epoch fences.
UPDATE conduit.outbox_relay
   SET lease_expires_at = now() + make_interval(secs => sqlc.arg(lease_seconds)::double precision),
       updated_at = now()
 WHERE owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch)
RETURNING epoch;

-- name: OutboxRelayRelease :exec
UPDATE conduit.outbox_relay
   SET owner = NULL, lease_expires_at = NULL, updated_at = now()
 WHERE owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch);

-- name: OutboxRelayState :one
-- The relay's checkpoint and the message it keeps failing on, for the
-- instance holding the lease (no row: it does not).
SELECT checkpoint_tx, checkpoint_position,
       COALESCE(failing_message_id, '00000000-0000-0000-0000-000000000000')::uuid AS failing_message_id,
       failed_attempts
  FROM conduit.outbox_relay
 WHERE owner = sqlc.arg(owner)::text AND epoch = sqlc.arg(epoch);

-- name: OutboxListForRelay :many
-- The next messages after the checkpoint, below the safe horizon, in
-- (transaction_id, position) order. blocked: its key has dead letters or
-- held messages, which go first.
SELECT o.transaction_id, o.position, o.message_id, o.topic, o.key, o.payload,
       COALESCE(o.headers::text, '')::text AS headers, o.created_at,
       (o.key <> '' AND (SELECT EXISTS (SELECT 1 FROM conduit.outbox_dead)) -- once per statement: usually empty
                    AND EXISTS (SELECT 1 FROM conduit.outbox_dead d WHERE d.key = o.key))::boolean AS blocked
  FROM conduit.outbox o
 WHERE (o.transaction_id, o.position) > (sqlc.arg(after_tx)::xid8, sqlc.arg(after_position)::bigint)
   AND o.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY o.transaction_id, o.position
 LIMIT sqlc.arg(max_count);

-- name: OutboxRelaySave :one
-- Ends a relay batch, for owner and epoch (ok false: the lease was lost and
-- nothing is written): moves the checkpoint, records the message that
-- failed (or none), counts deliveries, extends the lease, and moves the
-- messages listed in move_tx/move_position from the outbox to
-- conduit.outbox_dead: as 'dead' the one at dead_tx/dead_position (its
-- attempts and error given), as 'held' the others. more: messages follow the
-- checkpoint (readable, or waiting behind the horizon).
WITH relay AS (
    UPDATE conduit.outbox_relay r
       SET checkpoint_tx = sqlc.arg(checkpoint_tx)::xid8,
           checkpoint_position = sqlc.arg(checkpoint_position)::bigint,
           failing_message_id = sqlc.narg(failing_message_id)::uuid,
           failed_attempts = sqlc.arg(failed_attempts)::integer,
           last_error = sqlc.narg(last_error)::text,
           messages_delivered = r.messages_delivered + sqlc.arg(delivered)::bigint,
           last_delivery_at = CASE WHEN sqlc.arg(delivered)::bigint > 0 THEN now() ELSE r.last_delivery_at END,
           lease_expires_at = now() + make_interval(secs => sqlc.arg(lease_seconds)::double precision),
           updated_at = now()
     WHERE r.owner = sqlc.arg(owner)::text AND r.epoch = sqlc.arg(epoch)::bigint
    RETURNING 1
), moved AS (
    INSERT INTO conduit.outbox_dead (transaction_id, position, message_id, topic, key, payload, headers,
                                     created_at, status, attempts, last_error, dead_at)
    SELECT o.transaction_id, o.position, o.message_id, o.topic, o.key, o.payload, o.headers, o.created_at,
           CASE WHEN dead THEN 'dead' ELSE 'held' END,
           CASE WHEN dead THEN sqlc.arg(dead_attempts)::integer ELSE 0 END,
           CASE WHEN dead THEN sqlc.arg(dead_error)::text END,
           CASE WHEN dead THEN now() END
      FROM ROWS FROM (unnest(sqlc.arg(move_tx)::text[]), unnest(sqlc.arg(move_position)::bigint[])) AS m(tx, pos)
      JOIN conduit.outbox o ON o.transaction_id = m.tx::xid8 AND o.position = m.pos
     CROSS JOIN LATERAL (SELECT o.transaction_id = sqlc.arg(dead_tx)::xid8
                                AND o.position = sqlc.arg(dead_position)::bigint AS dead) AS d
     WHERE EXISTS (SELECT 1 FROM relay)
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM relay) AS ok,
       (SELECT count(*) FROM moved) AS moved,
       -- The first message after the checkpoint, by the index, not EXISTS:
       -- the generic plan of an EXISTS over this row comparison is a bitmap
       -- scan of every index entry after the checkpoint (see OutboxAfter).
       ((SELECT true FROM conduit.outbox o
          WHERE (o.transaction_id, o.position) > (sqlc.arg(checkpoint_tx)::xid8, sqlc.arg(checkpoint_position)::bigint)
          ORDER BY o.transaction_id, o.position
          LIMIT 1) IS NOT NULL)::boolean AS more;

-- name: OutboxDeadDeliverable :many
-- Messages in conduit.outbox_dead that may go now: held ones whose key has
-- no dead letter (a retried or discarded dead letter's key), in order.
SELECT d.transaction_id, d.position, d.message_id, d.topic, d.key, d.payload,
       COALESCE(d.headers::text, '')::text AS headers, d.created_at, d.attempts
  FROM conduit.outbox_dead d
 WHERE d.status = 'held'
   AND (d.key = '' OR NOT EXISTS (SELECT 1 FROM conduit.outbox_dead x WHERE x.key = d.key AND x.status = 'dead'))
 ORDER BY d.transaction_id, d.position
 LIMIT sqlc.arg(max_count);

-- name: OutboxDeadSave :one
-- Ends a delivery of messages from conduit.outbox_dead, for owner and epoch
-- (ok false: the lease was lost, nothing written): deletes the delivered
-- ones, and counts a failed attempt at the one at failed_tx/failed_position
-- if any, which becomes 'dead' again once it has failed max_attempts times.
WITH relay AS (
    UPDATE conduit.outbox_relay r
       SET messages_delivered = r.messages_delivered + cardinality(sqlc.arg(delivered_tx)::text[]),
           last_delivery_at = CASE WHEN cardinality(sqlc.arg(delivered_tx)::text[]) > 0 THEN now() ELSE r.last_delivery_at END,
           updated_at = now()
     WHERE r.owner = sqlc.arg(owner)::text AND r.epoch = sqlc.arg(epoch)::bigint
    RETURNING 1
), delivered AS (
    DELETE FROM conduit.outbox_dead d
     USING ROWS FROM (unnest(sqlc.arg(delivered_tx)::text[]), unnest(sqlc.arg(delivered_position)::bigint[])) AS m(tx, pos)
     WHERE d.transaction_id = m.tx::xid8 AND d.position = m.pos AND EXISTS (SELECT 1 FROM relay)
    RETURNING 1
), failed AS (
    UPDATE conduit.outbox_dead d
       SET attempts = d.attempts + 1,
           last_error = sqlc.arg(error)::text,
           status = CASE WHEN d.attempts + 1 >= sqlc.arg(max_attempts)::integer THEN 'dead' ELSE 'held' END,
           dead_at = CASE WHEN d.attempts + 1 >= sqlc.arg(max_attempts)::integer THEN now() ELSE d.dead_at END,
           updated_at = now()
     WHERE d.transaction_id = sqlc.arg(failed_tx)::xid8 AND d.position = sqlc.arg(failed_position)::bigint
       AND EXISTS (SELECT 1 FROM relay)
    RETURNING d.attempts
)
SELECT EXISTS (SELECT 1 FROM relay) AS ok,
       COALESCE((SELECT f.attempts FROM failed f), 0)::integer AS attempts;

-- name: OutboxRetire :one
SELECT r.truncated::smallint[] AS truncated, r.current::smallint AS current
  FROM conduit.outbox_retire(sqlc.arg(rows_per_generation)::bigint) AS r(truncated, current);

-- name: OutboxStatusGet :one
SELECT s.pending::bigint AS pending,
       COALESCE(s.oldest_pending_at, '0001-01-01 00:00:00+00')::timestamptz AS oldest_pending_at,
       COALESCE(s.oldest_pending_seconds, 0)::double precision AS oldest_pending_seconds,
       s.dead_letters::bigint AS dead_letters,
       s.held::bigint AS held,
       s.messages_delivered::bigint AS messages_delivered,
       COALESCE(s.last_delivery_at, '0001-01-01 00:00:00+00')::timestamptz AS last_delivery_at,
       COALESCE(s.owner, '')::text AS owner,
       COALESCE(s.lease_expires_at, '0001-01-01 00:00:00+00')::timestamptz AS lease_expires_at,
       s.checkpoint_tx::bigint AS checkpoint_tx,
       s.checkpoint_position::bigint AS checkpoint_position,
       COALESCE(s.failing_message_id, '00000000-0000-0000-0000-000000000000')::uuid AS failing_message_id,
       s.failed_attempts::integer AS failed_attempts,
       COALESCE(s.last_error, '')::text AS last_error,
       s.current_generation::smallint AS current_generation,
       COALESCE(s.table_bytes, 0)::bigint AS table_bytes
  FROM conduit.outbox_status() AS s;

-- name: OutboxDeadList :many
-- Dead letters and the messages they hold back, in order.
SELECT d.transaction_id, d.position, d.message_id, d.topic, d.key, d.payload,
       COALESCE(d.headers::text, '')::text AS headers, d.created_at, d.status, d.attempts,
       COALESCE(d.last_error, '')::text AS last_error,
       COALESCE(d.dead_at, '0001-01-01 00:00:00+00')::timestamptz AS dead_at, d.updated_at
  FROM conduit.outbox_dead d
 WHERE d.status = 'dead' OR sqlc.arg(with_held)::boolean
 ORDER BY d.transaction_id, d.position;

-- name: OutboxDeadRetry :one
SELECT conduit.retry_dead_letter(sqlc.arg(message_id)::uuid)::boolean AS found;

-- name: OutboxDeadDiscard :one
SELECT conduit.discard_dead_letter(sqlc.arg(message_id)::uuid)::boolean AS found;

-- name: OutboxHead :one
-- The last message committed, for Relay.Drain (no row: none).
SELECT o.transaction_id, o.position
  FROM conduit.outbox o
 ORDER BY o.transaction_id DESC, o.position DESC
 LIMIT 1;

-- name: OutboxAfter :one
-- Whether messages follow the checkpoint (readable, or behind the horizon).
-- It looks for the first one in index order and stops there. (Written as
-- EXISTS, PostgreSQL's generic plan, the one it caches for a prepared
-- statement, was a bitmap scan reading the index entry of every message
-- after the checkpoint: each batch of a backlog cost time in proportion to
-- the backlog.)
SELECT ((SELECT true FROM conduit.outbox o
          WHERE (o.transaction_id, o.position) > (sqlc.arg(after_tx)::xid8, sqlc.arg(after_position)::bigint)
          ORDER BY o.transaction_id, o.position
          LIMIT 1) IS NOT NULL)::boolean AS more;

-- name: OutboxTransactionIDsCheck :one
SELECT ok::boolean AS ok, COALESCE(max_stored, 0)::bigint AS max_stored, next_xid::bigint AS next_xid
  FROM conduit.check_outbox_transaction_ids();

-- name: HorizonAge :one
SELECT conduit.horizon_age()::double precision AS seconds;
