-- +goose Up

-- append_batch appends several appends, each with its own stream, expected
-- version and events, in one statement, so in one transaction: the batch
-- that Append sends when several goroutines append at once (see
-- appendBatcher in append_batch.go). Each append keeps its own rule: under
-- its stream's lock it inserts its events after the stream's last where
-- conduit.append_verdict says 'ok' (and, with Any or StreamExists, its
-- first event id is not stored yet), exactly as EventAppendMany does alone.
--
-- Arrays, one entry per append, in call order:
--   p_streams, p_expected, p_counts (how many events the append has);
-- one entry per event, the appends' events one after the other:
--   p_event_ids, p_types, p_data, p_metadata ('' for none);
-- one entry per outbox message (a Config.Outbox rule's):
--   p_msg_appends (the append it comes from, from 1), p_msg_ids, p_topics,
--   p_keys, p_payloads, p_headers ('' for none).
--
-- It first takes the lock of every stream of the batch, in the order of
-- the lock keys (so two batches never wait for each other in a cycle; a
-- single append takes one lock only), before the transaction has an id: it
-- gets one younger than every append it waited for. Then it applies the
-- appends one by one in call order, each statement with a fresh snapshot
-- taken after the locks were granted, so it never reads a stale head, and
-- an append sees the versions of the batch's earlier appends to its stream.
-- Global positions are taken in call order too.
--
-- One row per append: r_append (from 1), and r_status 'ok' with the
-- append's last event (r_stream_version, r_transaction_id,
-- r_global_position), or the verdict that stopped it ('version_conflict',
-- 'transaction_order', 'duplicate' for a stored first event id with Any or
-- StreamExists, ...): that append wrote nothing, and the caller asks
-- conduit.explain_append why, as after a single append. Messages are
-- enqueued for the appends that wrote, in call order.
--
-- A unique violation (a writer that bypasses the stream lock, or an event
-- id stored elsewhere) aborts the whole batch: nothing of it commits, and
-- the caller appends each append alone.
-- +goose StatementBegin
CREATE FUNCTION conduit.append_batch(p_streams text[], p_expected bigint[], p_counts integer[],
                                     p_event_ids uuid[], p_types text[], p_data text[], p_metadata text[],
                                     p_msg_appends integer[], p_msg_ids uuid[], p_topics text[], p_keys text[],
                                     p_payloads bytea[], p_headers text[])
RETURNS TABLE (r_append integer, r_status text, r_stream_version bigint, r_transaction_id xid8,
               r_global_position bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_stream  text;
    v_first   integer := 1; -- the current append's first event
    v_version bigint;
    v_last_tx xid8;
    v_verdict text;
    v_ok      integer[] := '{}';
BEGIN
    FOR v_stream IN SELECT DISTINCT ON (hashtext(s.id)) s.id FROM unnest(p_streams) AS s(id)
                     ORDER BY hashtext(s.id), s.id LOOP
        PERFORM conduit.append_stream_lock(v_stream);
    END LOOP;

    FOR i IN 1 .. cardinality(p_streams) LOOP
        SELECT h.version, h.last_tx INTO v_version, v_last_tx FROM conduit.stream_head(p_streams[i], true) AS h;
        v_verdict := conduit.append_verdict(p_expected[i], v_version, v_last_tx,
                         COALESCE(pg_current_xact_id_if_assigned(), pg_snapshot_xmax(pg_current_snapshot())));
        IF v_verdict = 'ok' AND p_expected[i] IN (-1, -3)
           AND EXISTS (SELECT 1 FROM conduit.events x WHERE x.event_id = p_event_ids[v_first]) THEN
            v_verdict := 'duplicate';
        END IF;
        IF v_verdict = 'ok' THEN
            RETURN QUERY
            WITH ins AS (
                INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
                SELECT p_streams[i], v_version + u.ord, u.id, u.typ, u.dat::jsonb, NULLIF(u.meta, '')::jsonb
                  FROM unnest(p_event_ids[v_first : v_first + p_counts[i] - 1],
                              p_types[v_first : v_first + p_counts[i] - 1],
                              p_data[v_first : v_first + p_counts[i] - 1],
                              p_metadata[v_first : v_first + p_counts[i] - 1])
                       WITH ORDINALITY AS u(id, typ, dat, meta, ord)
                 ORDER BY u.ord
                RETURNING e.stream_version, e.transaction_id, e.global_position
            )
            SELECT i, 'ok'::text, ins.stream_version, ins.transaction_id, ins.global_position
              FROM ins
             ORDER BY ins.stream_version DESC
             LIMIT 1;
            v_ok := v_ok || i;
        ELSE
            RETURN QUERY SELECT i, v_verdict, v_version, NULL::xid8, NULL::bigint;
        END IF;
        v_first := v_first + p_counts[i];
    END LOOP;

    IF cardinality(p_msg_ids) > 0 THEN
        INSERT INTO conduit.outbox (message_id, topic, key, payload, headers)
        SELECT m.id, m.topic, m.key, m.payload, NULLIF(m.headers, '')::jsonb
          FROM unnest(p_msg_appends, p_msg_ids, p_topics, p_keys, p_payloads, p_headers)
               WITH ORDINALITY AS m(app, id, topic, key, payload, headers, ord)
         WHERE m.app = ANY (v_ok)
         ORDER BY m.ord;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION conduit.append_batch(text[], bigint[], integer[], uuid[], text[], text[], text[],
                                   integer[], uuid[], text[], text[], bytea[], text[]);
