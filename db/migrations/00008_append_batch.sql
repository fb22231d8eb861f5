-- +goose Up

-- append_batch appends several appends, each with its own stream, expected
-- version and events, in one statement, so in one transaction: the batch
-- that Append sends when several goroutines append at once (see
-- appendBatcher in append_batch.go). Each append keeps its own rule: under
-- its stream's lock it inserts its events after the stream's last where
-- conduit.append_verdict says 'ok' (and, with Any or StreamExists, its
-- first event id is not stored yet), exactly as EventAppendMany does alone.
-- The streams of a batch are distinct: the caller sends a later append to
-- a stream of the batch in the next batch.
--
-- Arrays, one entry per append, in call order:
--   p_streams, p_expected;
-- one entry per event, the appends' events one after the other:
--   p_event_appends (the event's append, from 1), p_event_ids, p_types,
--   p_data, p_metadata ('' for none);
-- one entry per outbox message (a Config.Outbox rule's):
--   p_msg_appends (the message's append, from 1), p_msg_ids, p_topics,
--   p_keys, p_payloads, p_headers ('' for none).
--
-- It first takes the lock of every stream of the batch, in the order of
-- the lock keys (so two batches never wait for each other in a cycle; a
-- single append takes one lock only), before the transaction has an id: it
-- gets one younger than every append it waited for. Then one INSERT, with
-- a snapshot taken after the locks were granted (so it never reads a stale
-- head), writes the events of the appends whose verdict is 'ok', taking
-- global positions in call order.
--
-- One row per append, in call order: r_append (from 1), and r_status 'ok'
-- with the append's last event (r_stream_version, r_transaction_id,
-- r_global_position), or the verdict that stopped it ('version_conflict',
-- 'transaction_order', 'duplicate' for a stored first event id with Any or
-- StreamExists, ...): that append wrote nothing, and the caller asks
-- conduit.explain_append why, as after a single append. Messages are
-- enqueued for the appends that wrote, in call order.
--
-- A unique violation (a writer that bypasses the stream lock, or an event
-- id stored elsewhere) aborts the whole batch: nothing of it commits, and
-- the caller sends each append alone.
-- +goose StatementBegin
CREATE FUNCTION conduit.append_batch(p_streams text[], p_expected bigint[],
                                     p_event_appends integer[], p_event_ids uuid[], p_types text[], p_data text[],
                                     p_metadata text[],
                                     p_msg_appends integer[], p_msg_ids uuid[], p_topics text[], p_keys text[],
                                     p_payloads bytea[], p_headers text[])
RETURNS TABLE (r_append integer, r_status text, r_stream_version bigint, r_transaction_id xid8,
               r_global_position bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM bool_and(conduit.append_stream_lock(k.id))
       FROM (SELECT DISTINCT ON (hashtext(s.id)) s.id FROM unnest(p_streams) AS s(id)
              ORDER BY hashtext(s.id), s.id) AS k;

    RETURN QUERY
    WITH heads AS (
        SELECT a.app, a.stream, a.expected, h.version, h.last_tx
          FROM unnest(p_streams, p_expected) WITH ORDINALITY AS a(stream, expected, app)
         CROSS JOIN LATERAL conduit.stream_head(a.stream, true) AS h
    ), verdicts AS MATERIALIZED (
        SELECT heads.*,
               CASE WHEN v.verdict = 'ok' AND heads.expected IN (-1, -3)
                         AND EXISTS (SELECT 1 FROM conduit.events x
                                      WHERE x.event_id = p_event_ids[array_position(p_event_appends, heads.app::integer)])
                    THEN 'duplicate' ELSE v.verdict END AS status
          FROM heads,
               LATERAL (SELECT conduit.append_verdict(heads.expected, heads.version, heads.last_tx,
                            COALESCE(pg_current_xact_id_if_assigned(), pg_snapshot_xmax(pg_current_snapshot())))
                            AS verdict) AS v
    ), ins AS (
        INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
        SELECT v.stream, v.version + row_number() OVER (PARTITION BY ev.app ORDER BY ev.ord), ev.id, ev.typ,
               ev.dat::jsonb, NULLIF(ev.meta, '')::jsonb
          FROM unnest(p_event_appends, p_event_ids, p_types, p_data, p_metadata)
               WITH ORDINALITY AS ev(app, id, typ, dat, meta, ord)
          JOIN verdicts AS v ON v.app = ev.app
         WHERE v.status = 'ok'
         ORDER BY ev.ord
        RETURNING e.stream_id, e.stream_version, e.transaction_id, e.global_position
    ), msg AS (
        INSERT INTO conduit.outbox (message_id, topic, key, payload, headers)
        SELECT m.id, m.topic, m.key, m.payload, NULLIF(m.headers, '')::jsonb
          FROM unnest(p_msg_appends, p_msg_ids, p_topics, p_keys, p_payloads, p_headers)
               WITH ORDINALITY AS m(app, id, topic, key, payload, headers, ord)
          JOIN verdicts AS v ON v.app = m.app
         WHERE v.status = 'ok'
         ORDER BY m.ord
    ), last AS (
        SELECT DISTINCT ON (ins.stream_id) ins.*
          FROM ins
         ORDER BY ins.stream_id, ins.stream_version DESC
    )
    SELECT v.app::integer, v.status, COALESCE(last.stream_version, v.version), last.transaction_id,
           last.global_position
      FROM verdicts AS v
      LEFT JOIN last ON last.stream_id = v.stream
     ORDER BY v.app;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION conduit.append_batch(text[], bigint[], integer[], uuid[], text[], text[], text[],
                                   integer[], uuid[], text[], text[], bytea[], text[]);
