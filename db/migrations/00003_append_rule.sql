-- +goose Up

-- append_verdict is the append rule, defined once: every path that appends
-- (the single-statement appends in db/queries/events.sql, and
-- conduit.append_to_stream) inserts only where it says 'ok', and
-- conduit.explain_append asks it why an append wrote nothing.
--
--   p_expected    -1 any, -2 no stream, -3 stream exists, n >= 0 exactly n
--   p_version     the stream's version (0: no events)
--   p_last_tx     the transaction id of the stream's last event (NULL: none)
--   p_current_tx  the appending transaction's id; while it has none yet,
--                 the next id the server will assign (it gets one younger
--                 than every committed transaction when it inserts)
--
-- 'transaction_order': a stream's order must equal the global log's, which
-- is ordered by transaction id; a transaction older than the one that wrote
-- the stream's last event would be read before it. A stored id at or above
-- the next id to assign means the database was restored from a logical
-- dump (see conduit.check_transaction_ids).
--
-- Plain SQL, immutable: the planner inlines it into the calling statement.
-- +goose StatementBegin
CREATE FUNCTION conduit.append_verdict(p_expected bigint, p_version bigint, p_last_tx xid8, p_current_tx xid8)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_expected IS NULL OR p_expected < -3 THEN 'invalid_expected_version'
        WHEN NOT (p_expected = -1
                  OR (p_expected = -2 AND p_version = 0)
                  OR (p_expected = -3 AND p_version > 0)
                  OR p_version = p_expected) THEN 'version_conflict'
        WHEN p_last_tx > p_current_tx THEN 'transaction_order'
        ELSE 'ok'
    END
$$;
-- +goose StatementEnd

-- append_stream_lock serializes appends to one stream for the rest of the
-- appending transaction (a transaction-scoped advisory lock on the stream
-- id's hash, in Conduit's own lock class), so two appends never race for a
-- stream's next version: the second waits for the first to end, then
-- appends after it. It takes no transaction id, so a transaction that waits
-- gets its id after the one it waited for. The lock class 1668247140 is
-- 'cond' in ASCII; the stream id's hash may collide with another stream's,
-- which only makes two streams' appends wait for each other.
-- +goose StatementBegin
CREATE FUNCTION conduit.append_stream_lock(p_stream_id text) RETURNS boolean
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(1668247140, hashtext(p_stream_id)) IS NOT NULL -- always true; inlined
$$;
-- +goose StatementEnd

-- explain_append says why an append of p_event_ids to p_stream_id, with
-- expected version p_expected, wrote nothing. It writes nothing itself.
-- Rows:
--   'duplicate'          one per event: the same ids are stored at the same
--                        place, where the expectation held (an idempotent
--                        retry);
--   'event_id_conflict'  one: r_conflict_event_id is stored at
--                        (r_conflict_stream, r_stream_version);
--   'version_conflict'   one: r_stream_version is the stream's version;
--   'transaction_order'  one: see conduit.append_verdict;
--   'restored_database'  one: stored transaction ids are above the server's;
--                        SELECT conduit.rebase_transaction_ids() repairs it;
--   'invalid_expected_version' one;
--   'ok'                 one: nothing stands in the way now (a concurrent
--                        append took the version meanwhile): append again.
-- +goose StatementBegin
CREATE FUNCTION conduit.explain_append(p_stream_id text, p_expected bigint, p_event_ids uuid[])
RETURNS TABLE (r_status text, r_stream_version bigint, r_transaction_id xid8, r_global_position bigint,
               r_recorded_at timestamptz, r_conflict_event_id uuid, r_conflict_stream text)
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
    v_last_tx xid8;
    v_stored  record;
    v_verdict text;
BEGIN
    SELECT e.stream_version, e.transaction_id INTO v_version, v_last_tx
      FROM conduit.events e
     WHERE e.stream_id = p_stream_id
     ORDER BY e.stream_version DESC
     LIMIT 1;
    v_version := COALESCE(v_version, 0);

    -- The first of the append's ids that is stored already, if any.
    SELECT u.ord, u.id, e.stream_id, e.stream_version INTO v_stored
      FROM unnest(p_event_ids) WITH ORDINALITY AS u(id, ord)
      JOIN conduit.events e ON e.event_id = u.id
     ORDER BY u.ord
     LIMIT 1;
    IF FOUND THEN
        -- An idempotent retry stores nothing new: every id is stored, in
        -- order, in this stream, from a version where the append's
        -- expectation held.
        IF v_stored.ord = 1 AND v_stored.stream_id = p_stream_id
           AND conduit.append_verdict(p_expected, v_stored.stream_version - 1, NULL, NULL) = 'ok'
           AND (SELECT count(*) FROM unnest(p_event_ids) WITH ORDINALITY AS u(id, ord)
                  JOIN conduit.events e ON e.event_id = u.id
                 WHERE e.stream_id = p_stream_id
                   AND e.stream_version = v_stored.stream_version + u.ord - 1) = cardinality(p_event_ids) THEN
            RETURN QUERY
            SELECT 'duplicate'::text, e.stream_version, e.transaction_id, e.global_position, e.recorded_at,
                   NULL::uuid, NULL::text
              FROM conduit.events e
             WHERE e.stream_id = p_stream_id
               AND e.stream_version BETWEEN v_stored.stream_version
                                        AND v_stored.stream_version + cardinality(p_event_ids) - 1
             ORDER BY e.stream_version;
            RETURN;
        END IF;
        RETURN QUERY SELECT 'event_id_conflict'::text, v_stored.stream_version, NULL::xid8, NULL::bigint,
                            NULL::timestamptz, v_stored.id, v_stored.stream_id;
        RETURN;
    END IF;

    v_verdict := conduit.append_verdict(p_expected, v_version, v_last_tx,
                     COALESCE(pg_current_xact_id_if_assigned(), pg_snapshot_xmax(pg_current_snapshot())));
    IF v_verdict = 'transaction_order' AND v_last_tx >= pg_snapshot_xmax(pg_current_snapshot()) THEN
        v_verdict := 'restored_database';
    END IF;
    RETURN QUERY SELECT v_verdict, v_version, v_last_tx, NULL::bigint, NULL::timestamptz, NULL::uuid, NULL::text;
END
$$;
-- +goose StatementEnd

-- append_to_stream, for appends from SQL, now follows the one rule above
-- and never fails on a race: it appends after a concurrent append with Any
-- and StreamExists, and reports a conflict with the others. Its signature
-- and rows are unchanged (r_status 'ok', 'duplicate', or a single row
-- 'version_conflict', 'event_id_conflict', 'transaction_order',
-- 'restored_database', 'invalid_expected_version').
--
-- The version of migration 1 is kept, unused, under another name, so that
-- migrating down restores it without a second copy of its text.
ALTER FUNCTION conduit.append_to_stream(text, bigint, uuid[], text[], text[], text[])
    RENAME TO append_to_stream_00001;
COMMENT ON FUNCTION conduit.append_to_stream_00001(text, bigint, uuid[], text[], text[], text[]) IS
    'Unused: migration 1''s conduit.append_to_stream, kept so that migrating below version 3 restores it.';
-- +goose StatementBegin
CREATE FUNCTION conduit.append_to_stream(
    p_stream_id text,
    p_expected  bigint,
    p_event_ids uuid[],
    p_types     text[],
    p_data      text[],
    p_metadata  text[]
) RETURNS TABLE (
    r_status         text,
    r_stream_version bigint,
    r_transaction_id bigint,
    r_global_position bigint,
    r_recorded_at    timestamptz,
    r_conflict_stream text
)
LANGUAGE plpgsql AS $$
DECLARE
    v_why record;
BEGIN
    PERFORM conduit.append_stream_lock(p_stream_id);
    LOOP
        FOR v_why IN SELECT * FROM conduit.explain_append(p_stream_id, p_expected, p_event_ids) LOOP
            EXIT WHEN v_why.r_status = 'ok';
            r_status := v_why.r_status;
            r_stream_version := v_why.r_stream_version;
            r_transaction_id := v_why.r_transaction_id::text::bigint;
            r_global_position := v_why.r_global_position;
            r_recorded_at := v_why.r_recorded_at;
            r_conflict_stream := v_why.r_conflict_stream;
            RETURN NEXT;
        END LOOP;
        IF v_why.r_status <> 'ok' THEN
            RETURN;
        END IF;
        -- Under the stream's lock, with a fresh snapshot: the version after
        -- the last is free unless an append that does not take the lock
        -- took it, in which case look again.
        RETURN QUERY
        INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
        SELECT p_stream_id, v_why.r_stream_version + u.ord, u.id, u.typ, u.dat::jsonb, NULLIF(u.meta, '')::jsonb
          FROM unnest(p_event_ids, p_types, p_data, p_metadata) WITH ORDINALITY AS u(id, typ, dat, meta, ord)
         ORDER BY u.ord
        ON CONFLICT (stream_id, stream_version) DO NOTHING
        RETURNING 'ok'::text, e.stream_version, e.transaction_id::text::bigint,
                  e.global_position, e.recorded_at, NULL::text;
        IF FOUND THEN
            RETURN;
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- assert_transaction_ids raises CDI04 on a database restored from a logical
-- dump (see conduit.check_transaction_ids) and returns true otherwise.
-- Readers of the global log call it in the reading statement, where the
-- planner evaluates it once, so that they fail loudly rather than read
-- nothing.
-- +goose StatementBegin
CREATE FUNCTION conduit.assert_transaction_ids() RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v record;
BEGIN
    SELECT * INTO v FROM conduit.check_transaction_ids();
    IF NOT v.ok THEN
        RAISE EXCEPTION 'conduit: stored transaction id % is above the server''s next one (%): the database was restored from a logical dump into another cluster', v.max_stored, v.next_xid
            USING ERRCODE = 'CDI04',
                  HINT = 'Run SELECT conduit.rebase_transaction_ids();';
    END IF;
    RETURN true;
END
$$;
-- +goose StatementEnd

COMMENT ON TABLE conduit.events IS
    'Conduit event log. Append with conduit.append_to_stream (or the Go API); rows are immutable. '
    'Read the global log in (transaction_id, global_position) order below pg_snapshot_xmin(pg_current_snapshot()).';

-- +goose Down
DROP FUNCTION conduit.append_to_stream(text, bigint, uuid[], text[], text[], text[]);
ALTER FUNCTION conduit.append_to_stream_00001(text, bigint, uuid[], text[], text[], text[])
    RENAME TO append_to_stream;
COMMENT ON FUNCTION conduit.append_to_stream(text, bigint, uuid[], text[], text[], text[]) IS NULL;
DROP FUNCTION conduit.assert_transaction_ids();
DROP FUNCTION conduit.explain_append(text, bigint, uuid[]);
DROP FUNCTION conduit.append_stream_lock(text);
DROP FUNCTION conduit.append_verdict(bigint, bigint, xid8, xid8);
