-- +goose Up

-- append_batch_one_outbox is conduit.append_batch_one for a batch of
-- single-event appends some of which enqueue outbox messages (a
-- Config.Outbox rule's): the same rule, locks, snapshot, result and plan
-- (see migration 11), and the messages of the appends written, in the same
-- statement. (conduit.append_batch, migration 8, takes any batch; its plan
-- numbers each append's events with a window function, joins them to their
-- appends and sorts them to find each append's last event.)
--
-- Arrays, one entry per append, in call order: p_streams (distinct),
-- p_expected, p_event_ids, p_types, p_data, p_metadata ('' for none); one
-- entry per message, in order: p_msg_appends (the 1-based index of the
-- append it belongs to), p_msg_ids, p_topics, p_keys, p_payloads, p_headers
-- ('' for none).
-- +goose StatementBegin
CREATE FUNCTION conduit.append_batch_one_outbox(p_streams text[], p_expected bigint[], p_event_ids uuid[],
                                                p_types text[], p_data text[], p_metadata text[],
                                                p_msg_appends integer[], p_msg_ids uuid[], p_topics text[],
                                                p_keys text[], p_payloads bytea[], p_headers text[])
RETURNS TABLE (r_append integer, r_status text, r_stream_version bigint, r_transaction_id xid8,
               r_global_position bigint)
LANGUAGE plpgsql AS $$
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

-- +goose Down
DROP FUNCTION conduit.append_batch_one_outbox(text[], bigint[], uuid[], text[], text[], text[],
                                              integer[], uuid[], text[], text[], bytea[], text[]);
