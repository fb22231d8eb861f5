-- Queries of the conduit command's doctor (internal/cli). They read
-- pg_stat_activity and the catalog; a role without pg_read_all_stats sees
-- other roles' sessions without their query text.

-- name: BackendListHoldingHorizon :many
-- Sessions, in any database of the cluster (transaction ids are the
-- cluster's), whose write transaction has been open for at least
-- min_age_seconds, oldest first. The oldest holds back the safe horizon of
-- every reader of the global log until it ends. The caller's own session
-- is left out.
SELECT a.pid::integer AS pid,
       COALESCE(a.datname, '')::text AS database,
       COALESCE(a.usename, '')::text AS username,
       COALESCE(a.application_name, '')::text AS application,
       COALESCE(a.state, '')::text AS state,
       a.xact_start::timestamptz AS xact_start,
       extract(epoch FROM now() - a.xact_start)::double precision AS age_seconds,
       age(a.backend_xid)::bigint AS xid_age,
       COALESCE(left(a.query, 500), '')::text AS query
  FROM pg_catalog.pg_stat_activity a
 WHERE a.backend_xid IS NOT NULL
   AND a.pid <> pg_backend_pid()
   AND a.xact_start IS NOT NULL
   AND a.xact_start <= now() - make_interval(secs => sqlc.arg(min_age_seconds)::double precision)
 ORDER BY age(a.backend_xid) DESC;

-- name: SessionListIdleInTransaction :many
-- Sessions of this database idle inside a transaction for at least
-- min_idle_seconds, longest first: each holds its locks and its snapshot
-- (vacuum keeps dead rows for it; a rebuild's TRUNCATE waits for its
-- locks), and with a transaction id it holds the safe horizon back too.
SELECT a.pid::integer AS pid,
       COALESCE(a.usename, '')::text AS username,
       COALESCE(a.application_name, '')::text AS application,
       COALESCE(a.state, '')::text AS state,
       a.xact_start::timestamptz AS xact_start,
       extract(epoch FROM now() - a.state_change)::double precision AS idle_seconds,
       (a.backend_xid IS NOT NULL)::boolean AS holds_xid,
       COALESCE(left(a.query, 500), '')::text AS query
  FROM pg_catalog.pg_stat_activity a
 WHERE a.datname = current_database()
   AND a.state IN ('idle in transaction', 'idle in transaction (aborted)')
   AND a.pid <> pg_backend_pid()
   AND a.state_change <= now() - make_interval(secs => sqlc.arg(min_idle_seconds)::double precision)
 ORDER BY a.state_change;

-- name: RelationSizeList :many
-- Tables of the conduit schema and their indexes, largest first: total
-- size (a table's with its indexes and TOAST), and the planner's row
-- estimate (-1: never analysed).
SELECT c.relname::text AS name,
       (CASE c.relkind WHEN 'i' THEN 'index' ELSE 'table' END)::text AS kind,
       COALESCE(t.relname, '')::text AS table_name,
       pg_total_relation_size(c.oid)::bigint AS total_bytes,
       c.reltuples::bigint AS row_estimate
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
  LEFT JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
 WHERE n.nspname = 'conduit' AND c.relkind IN ('r', 'p', 'i')
 ORDER BY pg_total_relation_size(c.oid) DESC, c.relname;

-- name: RoleExists :one
SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = sqlc.arg(role)::text)::boolean AS found;

-- name: RoleGrantCheck :many
-- What conduit.grant_application gives the application role (want true)
-- and what it must never hold (want false: the log's order and its
-- immutability), and whether the role has it. Keep it in step with
-- grant_application: doctor_test.go compares the two.
SELECT c.object::text AS object, c.privilege::text AS privilege, c.want::boolean AS want,
       (CASE c.kind
            WHEN 'schema' THEN has_schema_privilege(sqlc.arg(role)::text, c.object, c.privilege)
            WHEN 'table' THEN has_table_privilege(sqlc.arg(role)::text, c.object, c.privilege)
            WHEN 'column' THEN has_column_privilege(sqlc.arg(role)::text, 'conduit.events', c.object, c.privilege)
            WHEN 'outbox column' THEN has_column_privilege(sqlc.arg(role)::text, 'conduit.outbox',
                                                           substring(c.object FROM '[^.]+$'), c.privilege)
            WHEN 'sequence' THEN has_sequence_privilege(sqlc.arg(role)::text, c.object, c.privilege)
            ELSE has_function_privilege(sqlc.arg(role)::text, c.object, c.privilege)
        END)::boolean AS granted
  FROM (VALUES
        ('schema', 'conduit', 'USAGE', true),
        ('table', 'conduit.events', 'SELECT', true),
        ('column', 'stream_id', 'INSERT', true),
        ('column', 'stream_version', 'INSERT', true),
        ('column', 'event_id', 'INSERT', true),
        ('column', 'event_type', 'INSERT', true),
        ('column', 'data', 'INSERT', true),
        ('column', 'metadata', 'INSERT', true),
        ('column', 'transaction_id', 'INSERT', false),
        ('column', 'global_position', 'INSERT', false),
        ('column', 'recorded_at', 'INSERT', false),
        ('table', 'conduit.events', 'UPDATE', false),
        ('table', 'conduit.events', 'DELETE', false),
        ('table', 'conduit.events', 'TRUNCATE', false),
        ('table', 'conduit.projections', 'SELECT', true),
        ('table', 'conduit.projections', 'INSERT', true),
        ('table', 'conduit.projections', 'UPDATE', true),
        ('table', 'conduit.parked_events', 'SELECT', true),
        ('table', 'conduit.parked_events', 'INSERT', true),
        ('table', 'conduit.parked_events', 'UPDATE', true),
        ('table', 'conduit.parked_events', 'DELETE', true),
        ('function', 'conduit.append_verdict(bigint, bigint, xid8, xid8)', 'EXECUTE', true),
        ('function', 'conduit.append_stream_lock(text)', 'EXECUTE', true),
        ('function', 'conduit.stream_head(text, boolean)', 'EXECUTE', true),
        ('function', 'conduit.explain_append(text, bigint, uuid[])', 'EXECUTE', true),
        ('function', 'conduit.append_to_stream(text, bigint, uuid[], text[], text[], text[])', 'EXECUTE', true),
        ('function', 'conduit.abort_transaction(text)', 'EXECUTE', true),
        ('function', 'conduit.check_transaction_ids()', 'EXECUTE', true),
        ('function', 'conduit.assert_transaction_ids()', 'EXECUTE', true),
        ('function', 'conduit.projection_status()', 'EXECUTE', true),
        ('function', 'conduit.retry_parked_event(text, uuid)', 'EXECUTE', true),
        ('function', 'conduit.skip_parked_event(text, uuid)', 'EXECUTE', true),
        ('function', 'conduit.rebuild_projection(text)', 'EXECUTE', true),
        ('table', 'conduit.outbox', 'SELECT', true),
        ('outbox column', 'conduit.outbox.message_id', 'INSERT', true),
        ('outbox column', 'conduit.outbox.topic', 'INSERT', true),
        ('outbox column', 'conduit.outbox.key', 'INSERT', true),
        ('outbox column', 'conduit.outbox.payload', 'INSERT', true),
        ('outbox column', 'conduit.outbox.headers', 'INSERT', true),
        ('outbox column', 'conduit.outbox.generation', 'INSERT', true),
        ('outbox column', 'conduit.outbox.transaction_id', 'INSERT', false),
        ('outbox column', 'conduit.outbox.position', 'INSERT', false),
        ('table', 'conduit.outbox', 'UPDATE', false),
        ('table', 'conduit.outbox', 'DELETE', false),
        ('sequence', 'conduit.outbox_position_seq', 'USAGE', true),
        ('table', 'conduit.outbox_generation', 'SELECT', true),
        ('table', 'conduit.outbox_relay', 'SELECT', true),
        ('table', 'conduit.outbox_relay', 'UPDATE', true),
        ('table', 'conduit.outbox_dead', 'SELECT', true),
        ('table', 'conduit.outbox_dead', 'INSERT', true),
        ('table', 'conduit.outbox_dead', 'UPDATE', true),
        ('table', 'conduit.outbox_dead', 'DELETE', true),
        ('function', 'conduit.outbox_current_generation()', 'EXECUTE', true),
        ('function', 'conduit.outbox_status()', 'EXECUTE', true),
        ('function', 'conduit.check_outbox_transaction_ids()', 'EXECUTE', true),
        ('function', 'conduit.horizon_age()', 'EXECUTE', true),
        ('function', 'conduit.outbox_retire(bigint)', 'EXECUTE', true),
        ('function', 'conduit.retry_dead_letter(uuid)', 'EXECUTE', true),
        ('function', 'conduit.discard_dead_letter(uuid)', 'EXECUTE', true),
        ('function', 'conduit.rebuild_projection_online(text)', 'EXECUTE', true),
        ('function', 'conduit.swap_shadow_tables(text)', 'EXECUTE', true),
        ('function', 'conduit.rebuild_projection_online_00009(text)', 'EXECUTE', true),
        ('function', 'conduit.swap_shadow_tables_00009(text)', 'EXECUTE', true),
        ('function', 'conduit.copy_table_privileges(regclass,regclass)', 'EXECUTE', true),
        ('schema', 'conduit_shadow', 'USAGE', true),
        ('schema', 'conduit_shadow', 'CREATE', true)
       ) AS c(kind, object, privilege, want);
