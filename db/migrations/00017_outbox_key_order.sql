-- +goose Up

-- A key's messages are delivered in the order their transactions commit.
-- The relay delivers in transaction id order (below the safe horizon), and a
-- transaction gets its id at its first write; a key's lock (the lock an
-- append takes on a stream of that name, conduit.append_stream_lock), held
-- until the transaction ends, makes two transactions that enqueue to one
-- key go one after the other. Their ids follow the order of their commits
-- when each takes the lock before its first write. Two ways they did not:
--
-- 1. A rule's message keyed by something other than its stream
--    (Config.Outbox with a Message function): Append locked the stream
--    only, so an append could enqueue to a key another transaction held,
--    commit first, and still have the younger id. The appends' statements
--    (the library's queries, and the batch functions below) now take the
--    messages' keys' locks with the streams', before their first write.
--
-- 2. EnqueueTx in a transaction that wrote before (the common case: your
--    own rows, then their message): its id is older than that of a
--    transaction that enqueued to the key after it started and committed
--    while it ran. conduit.outbox_enqueue, which Enqueue and EnqueueTx now
--    call, refuses such an enqueue, as an append is refused for a stream
--    (conduit.append_verdict, 'transaction_order'): nothing is written and
--    the transaction can roll back and retry. In a transaction that has
--    written nothing it takes the locks before its id, and checks nothing.
--
-- Any other writer of conduit.outbox (a plain INSERT) gets transaction id
-- order, not commit order.

-- conduit.outbox_enqueue enqueues messages, from arrays, in array order
-- (headers are JSON objects as text, '' for none), after taking each
-- key's lock. It returns one row: 'ok', or 'transaction_order' and the
-- key, having written nothing.
--   SELECT * FROM conduit.outbox_enqueue(ARRAY[gen_random_uuid()], ARRAY['orders.paid'],
--                                        ARRAY['order-42'], ARRAY['{}'::bytea], ARRAY['']);
-- +goose StatementBegin
CREATE FUNCTION conduit.outbox_enqueue(p_ids uuid[], p_topics text[], p_keys text[], p_payloads bytea[],
                                       p_headers text[])
RETURNS TABLE (r_status text, r_key text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    -- Read before the locks: whether the transaction wrote before.
    v_xid xid8 := pg_current_xact_id_if_assigned();
    v_key text;
BEGIN
    PERFORM bool_and(conduit.append_stream_lock(k.key))
       FROM (SELECT DISTINCT ON (hashtext(u.key)) u.key FROM unnest(p_keys) AS u(key)
              WHERE u.key <> '' ORDER BY hashtext(u.key), u.key) AS k;
    IF v_xid IS NOT NULL THEN
        -- A statement of its own: its snapshot sees what committed while
        -- the locks were waited for. Messages of younger transactions are
        -- recent ones: the index from v_xid on, first match.
        SELECT o.key INTO v_key
          FROM conduit.outbox o
         WHERE o.transaction_id > v_xid AND o.key <> '' AND o.key = ANY (p_keys)
         ORDER BY o.transaction_id, o.position
         LIMIT 1;
        IF FOUND THEN
            RETURN QUERY SELECT 'transaction_order'::text, v_key;
            RETURN;
        END IF;
    END IF;
    INSERT INTO conduit.outbox (generation, message_id, topic, key, payload, headers)
    SELECT g.current, u.id, u.topic, u.key, u.payload, NULLIF(u.headers, '')::jsonb
      FROM (SELECT og.current FROM conduit.outbox_generation og) AS g,
           unnest(p_ids, p_topics, p_keys, p_payloads, p_headers) WITH ORDINALITY AS u(id, topic, key, payload, headers, ord)
     ORDER BY u.ord;
    RETURN QUERY SELECT 'ok'::text, NULL::text;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.append_batch(p_streams text[], p_expected bigint[], p_event_appends integer[], p_event_ids uuid[], p_types text[], p_data text[], p_metadata text[], p_msg_appends integer[], p_msg_ids uuid[], p_topics text[], p_keys text[], p_payloads bytea[], p_headers text[])
RETURNS TABLE(r_append integer, r_status text, r_stream_version bigint, r_transaction_id xid8, r_global_position bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    -- The streams' locks and the messages' keys' (the same lock for a key
    -- and a stream of one name), in one order: by hash, as every append
    -- and enqueue takes them.
    PERFORM bool_and(conduit.append_stream_lock(k.id))
       FROM (SELECT DISTINCT ON (hashtext(s.id)) s.id
               FROM (SELECT unnest(p_streams) UNION ALL SELECT unnest(p_keys)) AS s(id)
              WHERE s.id <> ''
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
        INSERT INTO conduit.outbox (generation, message_id, topic, key, payload, headers)
        SELECT g.current, m.id, m.topic, m.key, m.payload, NULLIF(m.headers, '')::jsonb
          FROM unnest(p_msg_appends, p_msg_ids, p_topics, p_keys, p_payloads, p_headers)
               WITH ORDINALITY AS m(app, id, topic, key, payload, headers, ord)
          JOIN verdicts AS v ON v.app = m.app
         CROSS JOIN (SELECT og.current FROM conduit.outbox_generation og) AS g
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

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.append_batch_one_outbox(p_streams text[], p_expected bigint[], p_event_ids uuid[], p_types text[], p_data text[], p_metadata text[], p_msg_appends integer[], p_msg_ids uuid[], p_topics text[], p_keys text[], p_payloads bytea[], p_headers text[])
RETURNS TABLE(r_append integer, r_status text, r_stream_version bigint, r_transaction_id xid8, r_global_position bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    -- The streams' locks and the messages' keys' (the same lock for a key
    -- and a stream of one name), in one order: by hash, as every append
    -- and enqueue takes them.
    PERFORM bool_and(conduit.append_stream_lock(k.id))
       FROM (SELECT DISTINCT ON (hashtext(s.id)) s.id
               FROM (SELECT unnest(p_streams) UNION ALL SELECT unnest(p_keys)) AS s(id)
              WHERE s.id <> ''
              ORDER BY hashtext(s.id), s.id) AS k;

    RETURN QUERY
    WITH verdicts AS MATERIALIZED (
        SELECT a.app, a.stream, a.id, a.typ, a.dat, a.meta, h.version,
               CASE WHEN v.verdict = 'ok' AND a.expected IN (-1, -3)
                         AND EXISTS (SELECT 1 FROM conduit.events x WHERE x.event_id = a.id)
                    THEN 'duplicate' ELSE v.verdict END AS status
          FROM unnest(p_streams, p_expected, p_event_ids, p_types, p_data, p_metadata)
               WITH ORDINALITY AS a(stream, expected, id, typ, dat, meta, app)
         CROSS JOIN LATERAL conduit.stream_head(a.stream, true) AS h
         CROSS JOIN LATERAL (SELECT conduit.append_verdict(a.expected, h.version, h.last_tx,
                                 COALESCE(pg_current_xact_id_if_assigned(), pg_snapshot_xmax(pg_current_snapshot())))
                                 AS verdict) AS v
    ), ins AS (
        INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
        SELECT v.stream, v.version + 1, v.id, v.typ, v.dat::jsonb, NULLIF(v.meta, '')::jsonb
          FROM verdicts AS v
         WHERE v.status = 'ok'
         ORDER BY v.app
        RETURNING e.stream_id, e.stream_version, e.transaction_id, e.global_position
    ), msg AS (
        -- The generation read once for the statement (the column's default,
        -- conduit.outbox_current_generation(), reads the same row under the
        -- same snapshot, once per message).
        INSERT INTO conduit.outbox (generation, message_id, topic, key, payload, headers)
        SELECT g.current, m.id, m.topic, m.key, m.payload, NULLIF(m.headers, '')::jsonb
          FROM unnest(p_msg_appends, p_msg_ids, p_topics, p_keys, p_payloads, p_headers)
               WITH ORDINALITY AS m(app, id, topic, key, payload, headers, ord)
          JOIN verdicts AS v ON v.app = m.app
         CROSS JOIN (SELECT og.current FROM conduit.outbox_generation og) AS g
         WHERE v.status = 'ok'
         ORDER BY m.ord
    )
    SELECT v.app::integer, v.status, COALESCE(ins.stream_version, v.version), ins.transaction_id,
           ins.global_position
      FROM verdicts AS v
      LEFT JOIN ins ON ins.stream_id = v.stream
     ORDER BY v.app;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION conduit.outbox_enqueue(uuid[], text[], text[], bytea[], text[]);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.append_batch(p_streams text[], p_expected bigint[], p_event_appends integer[], p_event_ids uuid[], p_types text[], p_data text[], p_metadata text[], p_msg_appends integer[], p_msg_ids uuid[], p_topics text[], p_keys text[], p_payloads bytea[], p_headers text[])
RETURNS TABLE(r_append integer, r_status text, r_stream_version bigint, r_transaction_id xid8, r_global_position bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
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

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.append_batch_one_outbox(p_streams text[], p_expected bigint[], p_event_ids uuid[], p_types text[], p_data text[], p_metadata text[], p_msg_appends integer[], p_msg_ids uuid[], p_topics text[], p_keys text[], p_payloads bytea[], p_headers text[])
RETURNS TABLE(r_append integer, r_status text, r_stream_version bigint, r_transaction_id xid8, r_global_position bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    PERFORM bool_and(conduit.append_stream_lock(k.id))
       FROM (SELECT DISTINCT ON (hashtext(s.id)) s.id FROM unnest(p_streams) AS s(id)
              ORDER BY hashtext(s.id), s.id) AS k;

    RETURN QUERY
    WITH verdicts AS MATERIALIZED (
        SELECT a.app, a.stream, a.id, a.typ, a.dat, a.meta, h.version,
               CASE WHEN v.verdict = 'ok' AND a.expected IN (-1, -3)
                         AND EXISTS (SELECT 1 FROM conduit.events x WHERE x.event_id = a.id)
                    THEN 'duplicate' ELSE v.verdict END AS status
          FROM unnest(p_streams, p_expected, p_event_ids, p_types, p_data, p_metadata)
               WITH ORDINALITY AS a(stream, expected, id, typ, dat, meta, app)
         CROSS JOIN LATERAL conduit.stream_head(a.stream, true) AS h
         CROSS JOIN LATERAL (SELECT conduit.append_verdict(a.expected, h.version, h.last_tx,
                                 COALESCE(pg_current_xact_id_if_assigned(), pg_snapshot_xmax(pg_current_snapshot())))
                                 AS verdict) AS v
    ), ins AS (
        INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
        SELECT v.stream, v.version + 1, v.id, v.typ, v.dat::jsonb, NULLIF(v.meta, '')::jsonb
          FROM verdicts AS v
         WHERE v.status = 'ok'
         ORDER BY v.app
        RETURNING e.stream_id, e.stream_version, e.transaction_id, e.global_position
    ), msg AS (
        -- The generation read once for the statement (the column's default,
        -- conduit.outbox_current_generation(), reads the same row under the
        -- same snapshot, once per message).
        INSERT INTO conduit.outbox (generation, message_id, topic, key, payload, headers)
        SELECT g.current, m.id, m.topic, m.key, m.payload, NULLIF(m.headers, '')::jsonb
          FROM unnest(p_msg_appends, p_msg_ids, p_topics, p_keys, p_payloads, p_headers)
               WITH ORDINALITY AS m(app, id, topic, key, payload, headers, ord)
          JOIN verdicts AS v ON v.app = m.app
         CROSS JOIN (SELECT og.current FROM conduit.outbox_generation og) AS g
         WHERE v.status = 'ok'
         ORDER BY m.ord
    )
    SELECT v.app::integer, v.status, COALESCE(ins.stream_version, v.version), ins.transaction_id,
           ins.global_position
      FROM verdicts AS v
      LEFT JOIN ins ON ins.stream_id = v.stream
     ORDER BY v.app;
END
$$;
-- +goose StatementEnd
