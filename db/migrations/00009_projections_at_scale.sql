-- +goose Up

-- Online rebuilds: a rebuild that replays into shadow copies of the
-- projection's read tables while the live ones keep serving, and swaps them
-- in when the replay has caught up with the live checkpoint, in one short
-- transaction. Readers never see an empty or half-built table.
--
-- shadow_tables, parallel to read_tables, names the shadow copies while an
-- online rebuild runs (NULL: none runs). The projector that holds the
-- lease replays into them (handlers write to conduit.Table(ctx, name)),
-- between its live batches, from shadow_checkpoint_*; shadow_events_applied
-- counts what it replayed, shadow_error says why its last shadow batch
-- failed (the live projection goes on regardless).
CREATE SCHEMA conduit_shadow;
COMMENT ON SCHEMA conduit_shadow IS
    'Shadow copies of read tables being rebuilt online (conduit.rebuild_projection_online).';

ALTER TABLE conduit.projections
    ADD COLUMN shadow_tables              text[],
    ADD COLUMN shadow_checkpoint_tx       xid8 NOT NULL DEFAULT '0',
    ADD COLUMN shadow_checkpoint_position bigint NOT NULL DEFAULT 0,
    ADD COLUMN shadow_events_applied      bigint NOT NULL DEFAULT 0,
    ADD COLUMN shadow_started_at          timestamptz,
    ADD COLUMN shadow_error               text;


-- projection_status answers in milliseconds at any lag, and shows an online
-- rebuild's progress (online_rebuild_*: events replayed, events/s, an
-- estimate of the seconds left, the last shadow batch's error). Migration 2's
-- version counts every event past each checkpoint, so its cost grows with
-- the lag (seconds at ten million events behind). This one counts at most
-- 10,001 events past the checkpoint, on the primary key: lag_events is that
-- count, exact (lag_exact), when the projection is at most 10,000 events
-- behind; further behind it is estimated from the global positions of the
-- log's head and of the checkpoint (positions skipped by rolled-back
-- appends make it a little high), and lag_exact is false. lag_seconds is the
-- age of the oldest of the counted events, and horizon_held_events counts
-- held events up to 10,001 likewise. Every other column is as before.
--
-- A paused projection (migration 7) reads 'paused', as before.
--
-- Migration 7's version (which wraps migration 2's) is kept under another
-- name, so that migrating below version 9 restores it without a second copy
-- of its text. It cannot be wrapped: the count of migration 2's version it
-- calls is the cost this version removes.
ALTER FUNCTION conduit.projection_status() RENAME TO projection_status_00007;
COMMENT ON FUNCTION conduit.projection_status_00007() IS
    'Migration 7''s conduit.projection_status: kept so that migrating below version 9 restores it.';
REVOKE EXECUTE ON FUNCTION conduit.projection_status_00007() FROM PUBLIC;
-- (OR REPLACE only for sqlc, which does not follow the rename.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.projection_status()
RETURNS TABLE (name text, state text, checkpoint_tx bigint, checkpoint_position bigint,
               lag_events bigint, lag_seconds double precision, last_progress_at timestamptz,
               stall_reason text, stalled_event_id uuid, parked_count bigint, owner text, epoch bigint,
               lease_expires_at timestamptz, events_applied bigint, rebuild_started_at timestamptz,
               horizon_held_events bigint, horizon_pid integer, horizon_since timestamptz,
               horizon_application text, horizon_query text, lag_exact boolean,
               online_rebuild_started_at timestamptz, online_rebuild_replayed bigint,
               online_rebuild_events_per_second double precision,
               online_rebuild_seconds_left double precision, online_rebuild_error text)
LANGUAGE sql STABLE
-- Its plan's estimates scale with the log; the work does not: no JIT.
SET jit = off
AS $$
WITH horizon AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
head AS (
    SELECT e.global_position
      FROM conduit.events e
     ORDER BY e.transaction_id DESC, e.global_position DESC
     LIMIT 1)
SELECT p.name,
       CASE
           WHEN p.paused_at IS NOT NULL THEN 'paused'
           WHEN p.state = 'stalled' THEN 'stalled'
           WHEN p.owner IS NULL OR p.lease_expires_at < now() THEN 'stopped'
           WHEN p.rebuild_started_at IS NOT NULL THEN 'rebuilding'
           ELSE p.state
       END,
       p.checkpoint_tx::text::bigint,
       p.checkpoint_position,
       CASE WHEN lag.events <= 10000 THEN lag.events
            ELSE GREATEST(lag.events, (SELECT h.global_position FROM head h) - p.checkpoint_position)
       END,
       COALESCE(extract(epoch FROM now() - lag.oldest), 0)::double precision,
       p.last_progress_at,
       p.stall_reason,
       p.stalled_event_id,
       (SELECT count(*) FROM conduit.parked_events pe
         WHERE pe.projection = p.name AND pe.status IN ('parked', 'retry')),
       p.owner,
       p.epoch,
       p.lease_expires_at,
       p.events_applied,
       p.rebuild_started_at,
       held.events,
       h.pid,
       h.xact_start,
       h.application_name,
       h.query,
       lag.events <= 10000,
       CASE WHEN p.shadow_tables IS NOT NULL THEN p.shadow_started_at END,
       CASE WHEN p.shadow_tables IS NOT NULL THEN p.shadow_events_applied END,
       online.rate,
       -- What is left, in global positions, at the rate positions have
       -- been replayed so far: an estimate.
       CASE WHEN p.shadow_tables IS NOT NULL AND online.rate > 0 AND p.shadow_checkpoint_position > 0
            THEN GREATEST((SELECT h.global_position FROM head h) - p.shadow_checkpoint_position, 0)
                 * online.elapsed / p.shadow_checkpoint_position
       END,
       CASE WHEN p.shadow_tables IS NOT NULL THEN p.shadow_error END
  FROM conduit.projections p
 CROSS JOIN LATERAL (
       SELECT GREATEST(extract(epoch FROM now() - p.shadow_started_at)::double precision, 0.001) AS elapsed,
              CASE WHEN p.shadow_tables IS NOT NULL
                   THEN p.shadow_events_applied
                        / GREATEST(extract(epoch FROM now() - p.shadow_started_at)::double precision, 0.001)
              END AS rate) online
 CROSS JOIN LATERAL (
       SELECT count(*) AS events, min(c.recorded_at) AS oldest
         FROM (SELECT e.recorded_at
                 FROM conduit.events e
                WHERE (e.transaction_id, e.global_position) > (p.checkpoint_tx, p.checkpoint_position)
                ORDER BY e.transaction_id, e.global_position
                LIMIT 10001) c) lag
 CROSS JOIN LATERAL (
       -- Past the checkpoint and at or above the horizon, as one bound
       -- (two, and the scan would start at the checkpoint and filter).
       SELECT count(*) AS events
         FROM (SELECT 1
                 FROM conduit.events e, horizon
                WHERE (e.transaction_id, e.global_position) >
                      (CASE WHEN p.checkpoint_tx >= horizon.xmin THEN p.checkpoint_tx ELSE horizon.xmin END,
                       CASE WHEN p.checkpoint_tx >= horizon.xmin THEN p.checkpoint_position ELSE 0 END)
                LIMIT 10001) c) held
  LEFT JOIN LATERAL (
       SELECT a.pid, a.xact_start, a.application_name, left(a.query, 500) AS query
         FROM pg_stat_activity a
        WHERE held.events > 0 AND a.backend_xid IS NOT NULL
        ORDER BY age(a.backend_xid) DESC
        LIMIT 1) h ON true
 ORDER BY p.name;
$$;
-- +goose StatementEnd


-- rebuild_projection_online starts (or restarts) an online rebuild: it
-- creates an empty shadow copy of each read table (CREATE TABLE … (LIKE …
-- INCLUDING ALL), in conduit_shadow) and sets the replay's checkpoint to the
-- start. The projector's running instance does the rest. Nothing changes
-- for readers until the swap.
--
--   SELECT conduit.rebuild_projection_online('order_totals');
-- +goose StatementBegin
CREATE FUNCTION conduit.rebuild_projection_online(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tables text[];
    v_old    text[];
    v_shadow text[] := '{}';
    v_table  text;
    v_copy   text;
BEGIN
    SELECT p.read_tables, p.shadow_tables INTO v_tables, v_old
      FROM conduit.projections p
     WHERE p.name = p_name
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conduit: no projection named %', p_name
            USING ERRCODE = 'CDI02',
                  HINT = 'A projection is registered when its projector first runs; see conduit.projection_status.';
    END IF;
    IF cardinality(v_tables) = 0 THEN
        RAISE EXCEPTION 'conduit: projection % declares no read tables to rebuild online', p_name
            USING ERRCODE = 'CDI02',
                  HINT = 'Declare them: NewRouter(name, tables...) or ReadTableOwner.';
    END IF;
    FOREACH v_copy IN ARRAY COALESCE(v_old, '{}') LOOP
        EXECUTE 'DROP TABLE IF EXISTS ' || v_copy;
    END LOOP;
    FOREACH v_table IN ARRAY v_tables LOOP
        v_copy := format('conduit_shadow.%I', 's' || v_table::regclass::oid);
        EXECUTE format('DROP TABLE IF EXISTS %s', v_copy);
        EXECUTE format('CREATE TABLE %s (LIKE %s INCLUDING ALL)', v_copy, v_table::regclass);
        v_shadow := v_shadow || v_copy;
    END LOOP;
    UPDATE conduit.projections
       SET shadow_tables = v_shadow, shadow_checkpoint_tx = '0', shadow_checkpoint_position = 0,
           shadow_events_applied = 0, shadow_started_at = now(), shadow_error = NULL, updated_at = now()
     WHERE name = p_name;
END
$$;
-- +goose StatementEnd

-- swap_shadow_tables ends an online rebuild whose replay has reached the live
-- checkpoint: in the caller's transaction (the projector's, which holds the
-- projection's row), each live table is renamed aside, its shadow moved into
-- its schema under its name, its privileges copied, the sequences it owns
-- (serial columns) handed over, and the old table dropped. Readers wait for
-- the renames' locks only; lock_timeout bounds that wait (the projector
-- retries later).
-- +goose StatementBegin
CREATE FUNCTION conduit.swap_shadow_tables(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tables text[];
    v_shadow text[];
    v_live   regclass;
    v_copy   regclass;
    v_schema name;
    v_rel    name;
    v_aside  text;
    v_acl    record;
    v_seq    record;
BEGIN
    SELECT p.read_tables, p.shadow_tables INTO v_tables, v_shadow
      FROM conduit.projections p WHERE p.name = p_name;
    IF v_shadow IS NULL THEN
        RETURN;
    END IF;
    FOR i IN 1 .. cardinality(v_tables) LOOP
        v_live := v_tables[i]::regclass;
        v_copy := v_shadow[i]::regclass;
        SELECT n.nspname, c.relname INTO v_schema, v_rel
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = v_live;
        FOR v_acl IN SELECT a.grantee, a.privilege_type
                       FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = v_live LOOP
            EXECUTE format('GRANT %s ON %s TO %s', v_acl.privilege_type, v_copy,
                           CASE WHEN v_acl.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(v_acl.grantee::regrole::text) END);
        END LOOP;
        v_aside := left(v_rel, 40) || '_conduit_old';
        EXECUTE format('ALTER TABLE %s RENAME TO %I', v_live, v_aside);
        EXECUTE format('ALTER TABLE %s RENAME TO %I', v_copy, v_rel);
        EXECUTE format('ALTER TABLE %s SET SCHEMA %I', v_copy, v_schema);
        -- (A sequence and the table owning it share a schema: after the move.)
        FOR v_seq IN SELECT d.objid::regclass AS seq, a.attname
                       FROM pg_depend d
                       JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                       JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                      WHERE d.classid = 'pg_class'::regclass AND d.refobjid = v_live AND d.deptype = 'a' LOOP
            EXECUTE format('ALTER SEQUENCE %s OWNED BY %s.%I', v_seq.seq, v_copy, v_seq.attname);
        END LOOP;
        EXECUTE format('DROP TABLE %s', v_live);
    END LOOP;
    UPDATE conduit.projections
       SET shadow_tables = NULL, shadow_error = NULL, updated_at = now()
     WHERE name = p_name;
END
$$;
-- +goose StatementEnd


-- grant_application also grants what an online rebuild needs: making shadow
-- tables in conduit_shadow, and the two functions (the swap also needs
-- ownership of the read tables, which are the application's own).
-- Migration 6's version is kept under another name and called.
ALTER FUNCTION conduit.grant_application(name) RENAME TO grant_application_00006;
COMMENT ON FUNCTION conduit.grant_application_00006(name) IS
    'Migration 6''s conduit.grant_application: called by the current one, and kept so that migrating below version 9 restores it.';
-- (OR REPLACE only for sqlc, which does not follow the rename.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.grant_application(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conduit.grant_application_00006(p_role);
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA conduit_shadow TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION '
                   'conduit.rebuild_projection_online(text), '
                   'conduit.swap_shadow_tables(text) '
                   'TO %I', p_role);
END
$$;
-- +goose StatementEnd

-- revoke_application takes back the schema conduit_shadow too.
ALTER FUNCTION conduit.revoke_application(name) RENAME TO revoke_application_00004;
COMMENT ON FUNCTION conduit.revoke_application_00004(name) IS
    'Migration 4''s conduit.revoke_application: called by the current one, and kept so that migrating below version 9 restores it.';
-- (OR REPLACE only for sqlc, which does not follow the rename.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.revoke_application(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conduit.revoke_application_00004(p_role);
    EXECUTE format('REVOKE ALL ON SCHEMA conduit_shadow FROM %I', p_role);
END
$$;
-- +goose StatementEnd

-- Not for everyone: granted by grant_application, or the owner's.
REVOKE EXECUTE ON FUNCTION
    conduit.rebuild_projection_online(text),
    conduit.swap_shadow_tables(text),
    conduit.grant_application_00006(name),
    conduit.revoke_application(name),
    conduit.revoke_application_00004(name)
    FROM PUBLIC;

-- +goose Down
DROP FUNCTION conduit.revoke_application(name);
ALTER FUNCTION conduit.revoke_application_00004(name) RENAME TO revoke_application;
COMMENT ON FUNCTION conduit.revoke_application(name) IS NULL;
DROP FUNCTION conduit.grant_application(name);
GRANT EXECUTE ON FUNCTION conduit.grant_application_00006(name) TO PUBLIC;
ALTER FUNCTION conduit.grant_application_00006(name) RENAME TO grant_application;
COMMENT ON FUNCTION conduit.grant_application(name) IS NULL;
DROP FUNCTION conduit.projection_status();
ALTER FUNCTION conduit.projection_status_00007() RENAME TO projection_status;
COMMENT ON FUNCTION conduit.projection_status() IS NULL;
GRANT EXECUTE ON FUNCTION conduit.projection_status() TO PUBLIC;
DROP FUNCTION conduit.swap_shadow_tables(text);
DROP FUNCTION conduit.rebuild_projection_online(text);
ALTER TABLE conduit.projections
    DROP COLUMN shadow_error,
    DROP COLUMN shadow_started_at,
    DROP COLUMN shadow_events_applied,
    DROP COLUMN shadow_checkpoint_position,
    DROP COLUMN shadow_checkpoint_tx,
    DROP COLUMN shadow_tables;
DROP SCHEMA conduit_shadow CASCADE;
