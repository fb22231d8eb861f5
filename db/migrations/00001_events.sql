-- +goose Up
-- The conduit schema may already exist: conduit.Migrate creates it first so
-- that its goose version table can live inside it.
CREATE SCHEMA IF NOT EXISTS conduit;

-- The event log. Rows are immutable (see the triggers below).
--
-- global_position is an identity, taken at INSERT time but visible only at
-- COMMIT, so it may commit out of order. transaction_id is the writer's
-- transaction id: readers of the global log only read rows whose
-- transaction_id is below the oldest still-running transaction
-- (pg_snapshot_xmin) and order by (transaction_id, global_position), so an
-- event that commits late is never skipped.
CREATE TABLE conduit.events (
    global_position bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id  xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stream_id       text NOT NULL,
    stream_version  bigint NOT NULL,
    event_id        uuid NOT NULL,
    event_type      text NOT NULL,
    data            jsonb NOT NULL,
    metadata        jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_global_order PRIMARY KEY (transaction_id, global_position),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_id_length CHECK (octet_length(stream_id) BETWEEN 1 AND 2048),
    CONSTRAINT events_event_type_length CHECK (octet_length(event_type) BETWEEN 1 AND 255),
    CONSTRAINT events_stream_version_positive CHECK (stream_version >= 1)
);

COMMENT ON TABLE conduit.events IS
    'Conduit event log. Append with conduit.append_to_stream; rows are immutable. '
    'Read the global log in (transaction_id, global_position) order below pg_snapshot_xmin(pg_current_snapshot()).';

-- Events are immutable: UPDATE, DELETE and TRUNCATE are refused.
-- +goose StatementBegin
CREATE FUNCTION conduit.refuse_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'conduit.events is append-only: % refused', TG_OP
        USING ERRCODE = 'CDI01',
              HINT = 'Events are immutable; append a compensating event instead.';
END
$$;
-- +goose StatementEnd

CREATE TRIGGER events_immutable
    BEFORE UPDATE OR DELETE ON conduit.events
    FOR EACH ROW EXECUTE FUNCTION conduit.refuse_event_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON conduit.events
    FOR EACH STATEMENT EXECUTE FUNCTION conduit.refuse_event_change();

-- append_to_stream appends events to one stream in a single call.
--
-- p_expected: -1 any, -2 no stream, -3 stream exists, n >= 0 exactly n.
-- It never raises for an expected outcome, so that a caller's transaction
-- stays usable; it returns one row per event with r_status = 'ok' (written)
-- or 'duplicate' (an idempotent retry: the same event ids already stored at
-- the same place, nothing written), or a single row with r_status
-- 'version_conflict', 'event_id_conflict' or 'transaction_order'.
-- Two racing appends that both pass the version check are stopped by the
-- UNIQUE (stream_id, stream_version) constraint.
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
    v_last_version bigint;
    v_last_tx      xid8;
    v_first_stream text;
    v_first_version bigint;
    v_matches      bigint;
BEGIN
    SELECT e.stream_version, e.transaction_id
      INTO v_last_version, v_last_tx
      FROM conduit.events e
     WHERE e.stream_id = p_stream_id
     ORDER BY e.stream_version DESC
     LIMIT 1;
    IF NOT FOUND THEN
        v_last_version := 0;
    END IF;

    -- Idempotent retry: the first event id is already stored.
    SELECT e.stream_id, e.stream_version
      INTO v_first_stream, v_first_version
      FROM conduit.events e
     WHERE e.event_id = p_event_ids[1];
    IF FOUND THEN
        IF v_first_stream = p_stream_id
           AND (p_expected = -1
                OR (p_expected = -2 AND v_first_version = 1)
                OR (p_expected = -3 AND v_first_version > 1)
                OR (p_expected >= 0 AND v_first_version = p_expected + 1)) THEN
            SELECT count(*) INTO v_matches
              FROM unnest(p_event_ids) WITH ORDINALITY AS u(id, ord)
              JOIN conduit.events e ON e.event_id = u.id
             WHERE e.stream_id = p_stream_id
               AND e.stream_version = v_first_version + u.ord - 1;
            IF v_matches = cardinality(p_event_ids) THEN
                RETURN QUERY
                SELECT 'duplicate'::text, e.stream_version, e.transaction_id::text::bigint,
                       e.global_position, e.recorded_at, NULL::text
                  FROM conduit.events e
                 WHERE e.stream_id = p_stream_id
                   AND e.stream_version BETWEEN v_first_version
                                            AND v_first_version + cardinality(p_event_ids) - 1
                 ORDER BY e.stream_version;
                RETURN;
            END IF;
        END IF;
        RETURN QUERY SELECT 'event_id_conflict'::text, v_first_version, NULL::bigint,
                            NULL::bigint, NULL::timestamptz, v_first_stream;
        RETURN;
    END IF;

    IF (p_expected = -2 AND v_last_version <> 0)
       OR (p_expected = -3 AND v_last_version = 0)
       OR (p_expected >= 0 AND v_last_version <> p_expected) THEN
        RETURN QUERY SELECT 'version_conflict'::text, v_last_version, NULL::bigint,
                            NULL::bigint, NULL::timestamptz, NULL::text;
        RETURN;
    END IF;

    -- Per-stream order must equal global order. Readers order by transaction
    -- id; a transaction whose id is older than that of the stream's last
    -- event would be read before it. Refuse; a retry gets a new id.
    IF v_last_tx IS NOT NULL AND v_last_tx > pg_current_xact_id() THEN
        RETURN QUERY SELECT 'transaction_order'::text, v_last_version, v_last_tx::text::bigint,
                            NULL::bigint, NULL::timestamptz, NULL::text;
        RETURN;
    END IF;

    RETURN QUERY
    INSERT INTO conduit.events AS e (stream_id, stream_version, event_id, event_type, data, metadata)
    SELECT p_stream_id, v_last_version + u.ord, u.id, u.typ, u.dat::jsonb, NULLIF(u.meta, '')::jsonb
      FROM unnest(p_event_ids, p_types, p_data, p_metadata) WITH ORDINALITY AS u(id, typ, dat, meta, ord)
     ORDER BY u.ord
    RETURNING 'ok'::text, e.stream_version, e.transaction_id::text::bigint,
              e.global_position, e.recorded_at, NULL::text;
END
$$;
-- +goose StatementEnd

-- abort_transaction puts the caller's transaction into the aborted state,
-- so that it can only roll back: AppendTx calls it when a synchronous
-- projection fails, so a caller that commits anyway stores nothing.
-- +goose StatementBegin
CREATE FUNCTION conduit.abort_transaction(p_reason text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'conduit: transaction aborted: %', p_reason
        USING ERRCODE = 'CDI03',
              HINT = 'A synchronous projection failed during AppendTx; roll back.';
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION conduit.abort_transaction(text);
DROP FUNCTION conduit.append_to_stream(text, bigint, uuid[], text[], text[], text[]);
DROP TABLE conduit.events;
DROP FUNCTION conduit.refuse_event_change();
