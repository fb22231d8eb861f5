-- +goose Up

-- The transactional outbox: messages written in the same transaction as the
-- events they announce, and relayed at least once, in order per key, by one
-- active relay (see outbox.go and relay.go).
--
-- Like the event log, the outbox is read in (transaction_id, position) order
-- below the oldest running transaction (pg_snapshot_xmin), so a message
-- whose transaction commits late is never skipped: position is taken at
-- INSERT but visible only at COMMIT.
--
-- The table is bounded without DELETE churn: it is partitioned into three
-- generations. Inserts go to the current one (conduit.outbox_generation);
-- once it holds rows_per_generation rows the relay makes the next, empty,
-- generation current, and it TRUNCATEs a generation that is not current
-- once its checkpoint has passed every row in it (conduit.outbox_retire).
-- Delivered messages are never deleted one by one, so the table does not
-- bloat under sustained load: it holds at most three generations.

CREATE TABLE conduit.outbox_generation (
    only_row           boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    current            smallint NOT NULL DEFAULT 0 CHECK (current BETWEEN 0 AND 2),
    -- The position sequence's value when current became current: the
    -- generation's size is about the sequence's value minus this.
    switched_position  bigint NOT NULL DEFAULT 0,
    switched_at        timestamptz NOT NULL DEFAULT now()
);
INSERT INTO conduit.outbox_generation DEFAULT VALUES;

-- The current generation, the default of conduit.outbox.generation.
-- PL/pgSQL, not SQL: a SQL function with a FROM is not inlined, and would
-- be parsed and planned again at each execution of each INSERT; PL/pgSQL
-- keeps its plan for the session. (Any generation is safe to write to: the
-- relay reads them all, and truncates one only once it has delivered
-- every row in it.)
-- +goose StatementBegin
CREATE FUNCTION conduit.outbox_current_generation() RETURNS smallint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT g.current FROM conduit.outbox_generation g);
END
$$;
-- +goose StatementEnd

CREATE SEQUENCE conduit.outbox_position_seq AS bigint;

CREATE TABLE conduit.outbox (
    generation     smallint NOT NULL DEFAULT conduit.outbox_current_generation(),
    position       bigint NOT NULL DEFAULT nextval('conduit.outbox_position_seq'),
    transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    message_id     uuid NOT NULL,
    topic          text NOT NULL,
    key            text NOT NULL DEFAULT '',
    payload        bytea NOT NULL,
    headers        jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT outbox_topic_length CHECK (octet_length(topic) BETWEEN 1 AND 255),
    CONSTRAINT outbox_key_length CHECK (octet_length(key) <= 1024)
) PARTITION BY LIST (generation);
CREATE TABLE conduit.outbox_g0 PARTITION OF conduit.outbox FOR VALUES IN (0);
CREATE TABLE conduit.outbox_g1 PARTITION OF conduit.outbox FOR VALUES IN (1);
CREATE TABLE conduit.outbox_g2 PARTITION OF conduit.outbox FOR VALUES IN (2);
CREATE INDEX outbox_order ON conduit.outbox (transaction_id, position);
COMMENT ON TABLE conduit.outbox IS
    'Conduit outbox. Enqueue with INSERT (message_id, topic, key, payload, headers); a relay delivers '
    'in (transaction_id, position) order below pg_snapshot_xmin(pg_current_snapshot()).';

-- The relay's checkpoint, lease and status: one row. The lease works as a
-- projector's (owner, epoch as fencing token, expiry on the database
-- clock); every write of the relay checks owner and epoch.
CREATE TABLE conduit.outbox_relay (
    only_row            boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    checkpoint_tx       xid8 NOT NULL DEFAULT '0',
    checkpoint_position bigint NOT NULL DEFAULT 0,
    owner               text,
    epoch               bigint NOT NULL DEFAULT 0,
    lease_expires_at    timestamptz,
    -- The message at the head of the log that publishing keeps failing
    -- on, and how often it failed so far.
    failing_message_id  uuid,
    failed_attempts     integer NOT NULL DEFAULT 0,
    last_error          text,
    messages_delivered  bigint NOT NULL DEFAULT 0,
    last_delivery_at    timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
INSERT INTO conduit.outbox_relay DEFAULT VALUES;

-- Dead letters, and the messages they hold back. A message that keeps
-- failing becomes a dead letter (status 'dead'); later messages of the same
-- (non-empty) key are moved here as 'held', in order, so that they wait for
-- it while other keys flow. conduit.retry_dead_letter makes a dead letter
-- 'held' again, conduit.discard_dead_letter deletes it: either way its key's
-- rows here are delivered next, in order, before any later message of the
-- key. A key with any row here is blocked in the main table.
CREATE TABLE conduit.outbox_dead (
    transaction_id xid8 NOT NULL,
    position       bigint NOT NULL,
    message_id     uuid NOT NULL,
    topic          text NOT NULL,
    key            text NOT NULL,
    payload        bytea NOT NULL,
    headers        jsonb,
    created_at     timestamptz NOT NULL,
    status         text NOT NULL CHECK (status IN ('dead', 'held')),
    attempts       integer NOT NULL DEFAULT 0,
    last_error     text,
    dead_at        timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (transaction_id, position)
);
CREATE INDEX outbox_dead_key ON conduit.outbox_dead (key, transaction_id, position);
CREATE INDEX outbox_dead_message ON conduit.outbox_dead (message_id);

-- retry_dead_letter asks the relay to deliver a dead letter again (its
-- attempts start over), followed by the messages of its key it held back.
-- Returns false if there is no such dead letter.
--
--   SELECT conduit.retry_dead_letter('0190…');
-- +goose StatementBegin
CREATE FUNCTION conduit.retry_dead_letter(p_message_id uuid) RETURNS boolean
LANGUAGE sql AS $$
    WITH r AS (
        UPDATE conduit.outbox_dead
           SET status = 'held', attempts = 0, updated_at = now()
         WHERE message_id = p_message_id AND status = 'dead'
        RETURNING 1)
    SELECT count(*) > 0 FROM r;
$$;
-- +goose StatementEnd

-- discard_dead_letter gives up on a dead letter for good: it is deleted,
-- and the messages of its key it held back are delivered next. Returns
-- false if there is no such dead letter.
--
--   SELECT conduit.discard_dead_letter('0190…');
-- +goose StatementBegin
CREATE FUNCTION conduit.discard_dead_letter(p_message_id uuid) RETURNS boolean
LANGUAGE sql AS $$
    WITH d AS (
        DELETE FROM conduit.outbox_dead
         WHERE message_id = p_message_id AND status = 'dead'
        RETURNING 1)
    SELECT count(*) > 0 FROM d;
$$;
-- +goose StatementEnd

-- outbox_status: one row, for psql and for the Go API.
--   SELECT * FROM conduit.outbox_status();
-- pending counts the messages the relay has not passed yet (committed or
-- not, readable or held behind the horizon); oldest_pending_at is the
-- enqueue time of the first of them. owner is NULL when no relay holds a
-- live lease.
-- +goose StatementBegin
CREATE FUNCTION conduit.outbox_status()
RETURNS TABLE (pending bigint, oldest_pending_at timestamptz, oldest_pending_seconds double precision,
               dead_letters bigint, held bigint, messages_delivered bigint,
               last_delivery_at timestamptz, owner text, lease_expires_at timestamptz,
               checkpoint_tx bigint, checkpoint_position bigint,
               failing_message_id uuid, failed_attempts integer, last_error text,
               current_generation smallint, table_bytes bigint)
LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM conduit.outbox o
             WHERE (o.transaction_id, o.position) > (r.checkpoint_tx, r.checkpoint_position)),
           oldest.created_at,
           EXTRACT(EPOCH FROM now() - oldest.created_at)::double precision,
           (SELECT count(*) FROM conduit.outbox_dead d WHERE d.status = 'dead'),
           (SELECT count(*) FROM conduit.outbox_dead d WHERE d.status = 'held'),
           r.messages_delivered,
           r.last_delivery_at,
           CASE WHEN r.lease_expires_at > now() THEN r.owner END,
           CASE WHEN r.lease_expires_at > now() THEN r.lease_expires_at END,
           r.checkpoint_tx::text::bigint,
           r.checkpoint_position,
           r.failing_message_id,
           r.failed_attempts,
           r.last_error,
           (SELECT g.current FROM conduit.outbox_generation g),
           (SELECT sum(pg_total_relation_size(c.oid))::bigint
              FROM pg_class c
             WHERE c.oid IN ('conduit.outbox_g0'::regclass, 'conduit.outbox_g1'::regclass,
                             'conduit.outbox_g2'::regclass))
      FROM conduit.outbox_relay r
      LEFT JOIN LATERAL (
            SELECT o.created_at FROM conduit.outbox o
             WHERE (o.transaction_id, o.position) > (r.checkpoint_tx, r.checkpoint_position)
             ORDER BY o.transaction_id, o.position
             LIMIT 1) oldest ON true
$$;
-- +goose StatementEnd

-- outbox_retire bounds the outbox: it TRUNCATEs each generation that is not
-- current and whose rows the relay's checkpoint has all passed, and makes
-- the next generation current once the current one holds about
-- p_rows_per_generation rows and the next one is empty. It never waits: a
-- generation another transaction is writing to (a late enqueue that read the
-- old generation) or reading is left for the next call. The relay calls it
-- after its batches; returns the generations truncated and the current one.
-- It runs as the outbox's owner (SECURITY DEFINER), so that an application
-- role needs no TRUNCATE privilege: it truncates only what is delivered.
-- +goose StatementBegin
CREATE FUNCTION conduit.outbox_retire(p_rows_per_generation bigint)
RETURNS TABLE (truncated smallint[], current smallint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_gen conduit.outbox_generation%ROWTYPE;
    v_cp_tx xid8;
    v_cp_pos bigint;
    v_g smallint;
    v_next smallint;
    v_table text;
    v_any boolean;
    v_undelivered boolean;
    v_truncated smallint[] := '{}';
    v_empty smallint[] := '{}';
    v_seq bigint;
BEGIN
    SELECT * INTO v_gen FROM conduit.outbox_generation FOR UPDATE;
    SELECT r.checkpoint_tx, r.checkpoint_position INTO v_cp_tx, v_cp_pos FROM conduit.outbox_relay r;
    FOR v_g IN SELECT g::smallint FROM generate_series(0, 2) AS g WHERE g <> v_gen.current LOOP
        v_table := format('conduit.outbox_g%s', v_g);
        BEGIN
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE NOWAIT', v_table);
        EXCEPTION WHEN lock_not_available THEN
            CONTINUE;
        END;
        -- Locked: no transaction is writing to it, so every row in it is
        -- committed, and each is either passed by the checkpoint or not.
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s o), '
                       'EXISTS (SELECT 1 FROM %s o WHERE (o.transaction_id, o.position) > ($1, $2))',
                       v_table, v_table)
           INTO v_any, v_undelivered USING v_cp_tx, v_cp_pos;
        IF v_any AND NOT v_undelivered THEN
            EXECUTE format('TRUNCATE %s', v_table);
            v_truncated := v_truncated || v_g;
        END IF;
        IF NOT v_undelivered THEN
            v_empty := v_empty || v_g;
        END IF;
    END LOOP;
    v_next := (v_gen.current + 1) % 3;
    SELECT s.last_value INTO v_seq FROM conduit.outbox_position_seq s;
    IF v_seq - v_gen.switched_position >= p_rows_per_generation
       AND v_next = ANY (v_empty) THEN
        UPDATE conduit.outbox_generation
           SET current = v_next, switched_position = v_seq, switched_at = now();
        v_gen.current := v_next;
    END IF;
    RETURN QUERY SELECT v_truncated, v_gen.current;
END
$$;
-- +goose StatementEnd

-- horizon_age: how long, in seconds, the oldest running transaction that
-- has a transaction id (and so holds back the safe horizon that projectors,
-- the relay and ReadAll read below) has been running; 0 when none. For the
-- conduit.horizon.duration metric.
--   SELECT conduit.horizon_age();
-- +goose StatementBegin
CREATE FUNCTION conduit.horizon_age() RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(a.xact_start)), 0)::double precision
      FROM pg_stat_activity a
     WHERE a.backend_xid IS NOT NULL
$$;
-- +goose StatementEnd

-- grant_application also grants what the outbox needs: enqueueing (a
-- column-level INSERT that leaves transaction_id, position and generation to
-- their defaults, so nobody forges the outbox's order), the relay's tables
-- and functions. Migration 4's version is kept under another name and called.
ALTER FUNCTION conduit.grant_application(name) RENAME TO grant_application_00004;
COMMENT ON FUNCTION conduit.grant_application_00004(name) IS
    'Migration 4''s conduit.grant_application: called by the current one, and kept so that migrating below version 6 restores it.';
-- (OR REPLACE only for sqlc, which does not follow the rename.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.grant_application(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conduit.grant_application_00004(p_role);
    EXECUTE format('GRANT SELECT, INSERT (message_id, topic, key, payload, headers) ON conduit.outbox TO %I', p_role);
    EXECUTE format('GRANT USAGE ON SEQUENCE conduit.outbox_position_seq TO %I', p_role);
    EXECUTE format('GRANT SELECT ON conduit.outbox_generation TO %I', p_role);
    EXECUTE format('GRANT SELECT, UPDATE ON conduit.outbox_relay TO %I', p_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON conduit.outbox_dead TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION '
                   'conduit.outbox_current_generation(), '
                   'conduit.outbox_status(), '
                   'conduit.check_outbox_transaction_ids(), '
                   'conduit.horizon_age(), '
                   'conduit.outbox_retire(bigint), '
                   'conduit.retry_dead_letter(uuid), '
                   'conduit.discard_dead_letter(uuid) '
                   'TO %I', p_role);
END
$$;
-- +goose StatementEnd

-- Not for everyone: outbox_retire is granted by grant_application.
REVOKE EXECUTE ON FUNCTION conduit.outbox_retire(bigint), conduit.grant_application_00004(name) FROM PUBLIC;

-- After a logical restore (see conduit.check_transaction_ids), the
-- outbox's transaction ids are above the new cluster's too: the relay would
-- wait forever for them to fall below the horizon. The relay checks this
-- on taking its lease (conduit.check_outbox_transaction_ids), and
-- conduit.rebase_transaction_ids now also rebases the outbox: every message
-- gets transaction id 0, so the order becomes position order, and the
-- relay's checkpoint moves to just before the first message it had not
-- passed (messages after it that it had delivered are delivered again:
-- at least once, and the broker de-duplicates by ID). Migration 4's version
-- is kept under another name and called.
-- +goose StatementBegin
CREATE FUNCTION conduit.check_outbox_transaction_ids(OUT ok boolean, OUT max_stored bigint, OUT next_xid bigint)
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(m.x < pg_snapshot_xmax(pg_current_snapshot()), true),
           m.x::text::bigint,
           pg_snapshot_xmax(pg_current_snapshot())::text::bigint
      FROM (SELECT GREATEST(
                (SELECT o.transaction_id FROM conduit.outbox o
                  ORDER BY o.transaction_id DESC, o.position DESC LIMIT 1),
                (SELECT r.checkpoint_tx FROM conduit.outbox_relay r)) AS x) m;
$$;
-- +goose StatementEnd

ALTER FUNCTION conduit.rebase_transaction_ids() RENAME TO rebase_transaction_ids_00004;
COMMENT ON FUNCTION conduit.rebase_transaction_ids_00004() IS
    'Migration 4''s conduit.rebase_transaction_ids: called by the current one, and kept so that migrating below version 6 restores it.';
-- (OR REPLACE only for sqlc, which does not follow the rename.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.rebase_transaction_ids() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_rebased text;
    v_first bigint;
    v_messages bigint;
BEGIN
    v_rebased := conduit.rebase_transaction_ids_00004();
    LOCK TABLE conduit.outbox IN EXCLUSIVE MODE;
    SELECT min(o.position) INTO v_first
      FROM conduit.outbox o, conduit.outbox_relay r
     WHERE (o.transaction_id, o.position) > (r.checkpoint_tx, r.checkpoint_position);
    UPDATE conduit.outbox_relay r
       SET checkpoint_tx = '0',
           checkpoint_position = COALESCE(v_first - 1,
               (SELECT max(o.position) FROM conduit.outbox o), r.checkpoint_position),
           owner = NULL, lease_expires_at = NULL, updated_at = now();
    UPDATE conduit.outbox SET transaction_id = '0' WHERE transaction_id <> '0';
    GET DIAGNOSTICS v_messages = ROW_COUNT;
    UPDATE conduit.outbox_dead SET transaction_id = '0' WHERE transaction_id <> '0';
    RETURN format('%s; rebased %s outbox messages', v_rebased, v_messages);
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION conduit.rebase_transaction_ids(), conduit.rebase_transaction_ids_00004() FROM PUBLIC;

-- +goose Down
DROP FUNCTION conduit.rebase_transaction_ids();
ALTER FUNCTION conduit.rebase_transaction_ids_00004() RENAME TO rebase_transaction_ids;
COMMENT ON FUNCTION conduit.rebase_transaction_ids() IS NULL;
DROP FUNCTION conduit.check_outbox_transaction_ids();
DROP FUNCTION conduit.grant_application(name);
ALTER FUNCTION conduit.grant_application_00004(name) RENAME TO grant_application;
COMMENT ON FUNCTION conduit.grant_application(name) IS NULL;
DROP FUNCTION conduit.horizon_age();
DROP FUNCTION conduit.outbox_retire(bigint);
DROP FUNCTION conduit.outbox_status();
DROP FUNCTION conduit.discard_dead_letter(uuid);
DROP FUNCTION conduit.retry_dead_letter(uuid);
DROP TABLE conduit.outbox_dead;
DROP TABLE conduit.outbox_relay;
DROP TABLE conduit.outbox;
DROP SEQUENCE conduit.outbox_position_seq;
DROP FUNCTION conduit.outbox_current_generation();
DROP TABLE conduit.outbox_generation;
