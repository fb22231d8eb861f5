-- +goose Up

-- Privileges for three roles (see "Privileges" in the README):
--
--   owner        runs the migrations and owns the conduit schema and its
--                objects; it alone can disable or drop the triggers that
--                keep conduit.events immutable, so the application never
--                connects as the owner;
--   application  what the library needs to append, read, run projectors,
--                manage parked events and rebuild: conduit.grant_application;
--   reporting    SELECT on read tables, read-only by default, with timeouts:
--                conduit.grant_reporting.
--
-- These functions run with the caller's rights (SECURITY INVOKER): the
-- owner calls them. A later migration that adds a table or function the
-- application uses replaces grant_application, keeping this one under
-- another name for migrating down, as migration 3 did with
-- append_to_stream (roles_test.go lists the grants exactly).

-- grant_application gives p_role what the library needs, and nothing more:
--
--   schema conduit       USAGE (no CREATE);
--   conduit.events       SELECT, and INSERT on the columns an append writes
--                        only: never transaction_id or global_position (the
--                        log's order: a forged transaction id above the
--                        server's makes every reader take the database for a
--                        restored one), nor recorded_at (the database's
--                        clock at the append; projection_status measures lag
--                        with it). No UPDATE, DELETE, TRUNCATE, REFERENCES
--                        or TRIGGER. The identity needs no USAGE on its
--                        sequence;
--   conduit.projections  SELECT, INSERT, UPDATE (the projector's own
--                        bookkeeping: checkpoint, lease, state; it writes
--                        nearly every column, so column lists would protect
--                        nothing), no DELETE;
--   conduit.parked_events SELECT, INSERT, UPDATE, DELETE (parking, retrying,
--                        and a rebuild's clearing);
--   functions            EXECUTE on those the library calls, rebuild_projection
--                        included: a rebuild needs no right a projector lacks,
--                        and truncates only read tables p_role may truncate.
--
-- It grants nothing on the application's read tables: they are yours.
--
--   SELECT conduit.grant_application('conduit_app');
-- +goose StatementBegin
CREATE FUNCTION conduit.grant_application(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA conduit TO %I', p_role);
    EXECUTE format('GRANT SELECT, INSERT (stream_id, stream_version, event_id, event_type, data, metadata) '
                   'ON conduit.events TO %I', p_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON conduit.projections TO %I', p_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON conduit.parked_events TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION '
                   'conduit.append_verdict(bigint, bigint, xid8, xid8), '
                   'conduit.append_stream_lock(text), '
                   'conduit.stream_head(text, boolean), '
                   'conduit.explain_append(text, bigint, uuid[]), '
                   'conduit.append_to_stream(text, bigint, uuid[], text[], text[], text[]), '
                   'conduit.abort_transaction(text), '
                   'conduit.check_transaction_ids(), '
                   'conduit.assert_transaction_ids(), '
                   'conduit.projection_status(), '
                   'conduit.retry_parked_event(text, uuid), '
                   'conduit.skip_parked_event(text, uuid), '
                   'conduit.rebuild_projection(text) '
                   'TO %I', p_role);
END
$$;
-- +goose StatementEnd

-- revoke_application takes back every privilege p_role holds on the conduit
-- schema and on its tables, sequences and functions (grant_application's
-- and any other).
--
--   SELECT conduit.revoke_application('conduit_app');
-- +goose StatementBegin
CREATE FUNCTION conduit.revoke_application(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA conduit FROM %I', p_role);
    EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA conduit FROM %I', p_role);
    EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA conduit FROM %I', p_role);
    EXECUTE format('REVOKE ALL ON SCHEMA conduit FROM %I', p_role);
END
$$;
-- +goose StatementEnd

-- grant_reporting gives p_role SELECT on p_read_tables (and USAGE on their
-- schemas), nothing on the conduit schema, and, in this database, these
-- defaults: default_transaction_read_only on (its transactions take no
-- transaction id, so they never hold back the safe horizon that projectors
-- and ReadAll wait for), statement_timeout and
-- idle_in_transaction_session_timeout p_timeout (its locks never hold up a
-- rebuild's TRUNCATE for long, nor its snapshots vacuum). It needs the
-- right to grant SELECT on the tables (their owner) and to alter p_role
-- (a superuser, or CREATEROLE; on PostgreSQL 16 and later with ADMIN OPTION
-- on p_role). The settings apply to sessions that start afterwards.
--
--   SELECT conduit.grant_reporting('conduit_reporting', '{shop.orders,shop.order_totals}', '30s');
-- +goose StatementBegin
CREATE FUNCTION conduit.grant_reporting(p_role name, p_read_tables regclass[], p_timeout text DEFAULT '30s')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_schema name;
    v_table regclass;
BEGIN
    FOR v_schema IN
        SELECT DISTINCT n.nspname
          FROM unnest(p_read_tables) AS t(oid)
          JOIN pg_class c ON c.oid = t.oid
          JOIN pg_namespace n ON n.oid = c.relnamespace
    LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', v_schema, p_role);
    END LOOP;
    FOREACH v_table IN ARRAY p_read_tables LOOP
        EXECUTE format('GRANT SELECT ON %s TO %I', v_table, p_role);
    END LOOP;
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET default_transaction_read_only = on',
                   p_role, current_database());
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET statement_timeout = %L',
                   p_role, current_database(), p_timeout);
    EXECUTE format('ALTER ROLE %I IN DATABASE %I SET idle_in_transaction_session_timeout = %L',
                   p_role, current_database(), p_timeout);
END
$$;
-- +goose StatementEnd

-- rebase_transaction_ids, run after a logical restore, now also releases
-- every lease: a dump carries the leases live when it was taken, and a
-- restored instance would otherwise wait up to its LeaseDuration for them
-- to expire. A stalled projection stays stalled. (An instance still running
-- with a released lease loses it at its next batch: the fencing epoch.)
--
-- Migration 2's version does the rebase, kept under another name so that
-- migrating down restores it without a second copy of its text.
ALTER FUNCTION conduit.rebase_transaction_ids() RENAME TO rebase_transaction_ids_00002;
COMMENT ON FUNCTION conduit.rebase_transaction_ids_00002() IS
    'Migration 2''s conduit.rebase_transaction_ids: called by the current one, and kept so that migrating below version 4 restores it.';
-- (OR REPLACE only for sqlc, which does not follow the rename.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.rebase_transaction_ids() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_rebased text;
    v_released bigint;
BEGIN
    v_rebased := conduit.rebase_transaction_ids_00002();
    UPDATE conduit.projections
       SET owner = NULL, lease_expires_at = NULL,
           state = CASE WHEN state = 'stalled' THEN 'stalled' ELSE 'stopped' END,
           updated_at = now()
     WHERE owner IS NOT NULL OR lease_expires_at IS NOT NULL;
    GET DIAGNOSTICS v_released = ROW_COUNT;
    RETURN format('%s; released leases: %s', v_rebased, v_released);
END
$$;
-- +goose StatementEnd

-- PUBLIC may execute any function by default; these are not for everyone.
-- rebase_transaction_ids disables a trigger of conduit.events, which only
-- its owner can do: it fails for anyone else anyway. rebuild_projection is
-- granted to the application by grant_application. The unused
-- append_to_stream_00001 is for no one.
REVOKE EXECUTE ON FUNCTION
    conduit.rebase_transaction_ids(),
    conduit.rebase_transaction_ids_00002(),
    conduit.rebuild_projection(text),
    conduit.append_to_stream_00001(text, bigint, uuid[], text[], text[], text[]),
    conduit.grant_application(name),
    conduit.revoke_application(name),
    conduit.grant_reporting(name, regclass[], text)
    FROM PUBLIC;

-- +goose Down
GRANT EXECUTE ON FUNCTION
    conduit.rebase_transaction_ids_00002(),
    conduit.rebuild_projection(text),
    conduit.append_to_stream_00001(text, bigint, uuid[], text[], text[], text[])
    TO PUBLIC;
DROP FUNCTION conduit.rebase_transaction_ids();
ALTER FUNCTION conduit.rebase_transaction_ids_00002() RENAME TO rebase_transaction_ids;
COMMENT ON FUNCTION conduit.rebase_transaction_ids() IS NULL;
DROP FUNCTION conduit.grant_reporting(name, regclass[], text);
DROP FUNCTION conduit.revoke_application(name);
DROP FUNCTION conduit.grant_application(name);
