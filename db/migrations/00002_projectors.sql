-- +goose Up

-- One row per async projection: its checkpoint, its lease and its status.
--
-- The checkpoint is the (transaction_id, global_position) pair of the last
-- event the projection has passed, written in the same transaction as the
-- projection's read-table writes.
--
-- The lease (owner, epoch, lease_expires_at) makes one instance active at a
-- time. Every batch locks this row (FOR UPDATE) and checks owner and epoch
-- before it applies anything, so a former owner that was paused or cut off
-- can never move the checkpoint; lease times come from the database clock.
CREATE TABLE conduit.projections (
    name                 text PRIMARY KEY,
    checkpoint_tx        xid8 NOT NULL DEFAULT '0',
    checkpoint_position  bigint NOT NULL DEFAULT 0,
    owner                text,
    epoch                bigint NOT NULL DEFAULT 0,
    lease_expires_at     timestamptz,
    read_tables          text[] NOT NULL DEFAULT '{}',
    state                text NOT NULL DEFAULT 'stopped'
                         CHECK (state IN ('running', 'caught_up', 'stalled', 'stopped')),
    stall_reason         text,
    stalled_event_id     uuid,
    last_progress_at     timestamptz,
    events_applied       bigint NOT NULL DEFAULT 0,
    rebuild_started_at   timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- Events a projection gave up on (poison events under the park policy),
-- parked in the same transaction as the checkpoint that passes them.
-- status: parked (waiting), retry (asked for; the active instance re-applies
-- it in its next batch), skipped (given up for good, kept for the record).
CREATE TABLE conduit.parked_events (
    projection      text NOT NULL REFERENCES conduit.projections (name) ON DELETE CASCADE,
    event_id        uuid NOT NULL,
    transaction_id  xid8 NOT NULL,
    global_position bigint NOT NULL,
    stream_id       text NOT NULL,
    stream_version  bigint NOT NULL,
    event_type      text NOT NULL,
    error           text NOT NULL,
    attempts        integer NOT NULL,
    status          text NOT NULL DEFAULT 'parked' CHECK (status IN ('parked', 'retry', 'skipped')),
    parked_at       timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, event_id)
);

-- retry_parked_event asks the projection's active instance to re-apply a
-- parked event in its next batch. Returns false if no such parked event.
-- +goose StatementBegin
CREATE FUNCTION conduit.retry_parked_event(p_projection text, p_event_id uuid) RETURNS boolean
LANGUAGE sql AS $$
    UPDATE conduit.parked_events
       SET status = 'retry', updated_at = now()
     WHERE projection = p_projection AND event_id = p_event_id AND status = 'parked'
    RETURNING true;
$$;
-- +goose StatementEnd

-- skip_parked_event gives up on a parked event for good (the row stays, as
-- 'skipped', for the record). Returns false if no such parked event.
-- +goose StatementBegin
CREATE FUNCTION conduit.skip_parked_event(p_projection text, p_event_id uuid) RETURNS boolean
LANGUAGE sql AS $$
    UPDATE conduit.parked_events
       SET status = 'skipped', updated_at = now()
     WHERE projection = p_projection AND event_id = p_event_id AND status IN ('parked', 'retry')
    RETURNING true;
$$;
-- +goose StatementEnd

-- rebuild_projection truncates a projection's read tables and resets its
-- checkpoint, in one transaction; the running instance then replays from
-- the start. It first locks the projection's row, so it waits for a batch
-- in flight to commit and no batch can start until it commits: the two
-- never interleave. Parked events are cleared (the replay meets them again).
--
--   SELECT conduit.rebuild_projection('order_totals');
-- +goose StatementBegin
CREATE FUNCTION conduit.rebuild_projection(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tables text[];
BEGIN
    SELECT p.read_tables INTO v_tables
      FROM conduit.projections p
     WHERE p.name = p_name
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conduit: no projection named %', p_name
            USING ERRCODE = 'CDI02',
                  HINT = 'A projection is registered when its projector first runs; see conduit.projection_status.';
    END IF;
    IF cardinality(v_tables) > 0 THEN
        EXECUTE 'TRUNCATE ' || (SELECT string_agg(t::regclass::text, ', ') FROM unnest(v_tables) AS t);
    END IF;
    DELETE FROM conduit.parked_events WHERE projection = p_name;
    UPDATE conduit.projections
       SET checkpoint_tx = '0', checkpoint_position = 0, events_applied = 0,
           rebuild_started_at = now(), stall_reason = NULL, stalled_event_id = NULL,
           state = CASE WHEN state = 'stalled' THEN 'running' ELSE state END,
           updated_at = now()
     WHERE name = p_name;
END
$$;
-- +goose StatementEnd

-- projection_status: one row per projection, for psql and for the Go API.
--   SELECT * FROM conduit.projection_status();
-- state is the stored state, except: 'stopped' when no live lease,
-- 'rebuilding' while a rebuild's replay has not caught up. horizon_* name the
-- transaction holding back events this projection could otherwise read
-- (horizon_held_events of them).
-- +goose StatementBegin
CREATE FUNCTION conduit.projection_status()
RETURNS TABLE (name text, state text, checkpoint_tx bigint, checkpoint_position bigint,
               lag_events bigint, lag_seconds double precision, last_progress_at timestamptz,
               stall_reason text, stalled_event_id uuid, parked_count bigint, owner text, epoch bigint,
               lease_expires_at timestamptz, events_applied bigint, rebuild_started_at timestamptz,
               horizon_held_events bigint, horizon_pid integer, horizon_since timestamptz,
               horizon_application text, horizon_query text)
LANGUAGE sql STABLE AS $$
SELECT p.name,
       CASE
           WHEN p.state = 'stalled' THEN 'stalled'
           WHEN p.owner IS NULL OR p.lease_expires_at < now() THEN 'stopped'
           WHEN p.rebuild_started_at IS NOT NULL THEN 'rebuilding'
           ELSE p.state
       END,
       p.checkpoint_tx::text::bigint,
       p.checkpoint_position,
       lag.events,
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
       lag.held,
       h.pid,
       h.xact_start,
       h.application_name,
       h.query
  FROM conduit.projections p
 CROSS JOIN LATERAL (
       SELECT count(*) AS events,
              min(e.recorded_at) AS oldest,
              count(*) FILTER (WHERE e.transaction_id >= pg_snapshot_xmin(pg_current_snapshot())) AS held
         FROM conduit.events e
        WHERE (e.transaction_id, e.global_position) > (p.checkpoint_tx, p.checkpoint_position)) lag
  LEFT JOIN LATERAL (
       SELECT a.pid, a.xact_start, a.application_name, left(a.query, 500) AS query
         FROM pg_stat_activity a
        WHERE lag.held > 0 AND a.backend_xid IS NOT NULL
        ORDER BY age(a.backend_xid) DESC
        LIMIT 1) h ON true
 ORDER BY p.name;
$$;
-- +goose StatementEnd

-- check_transaction_ids detects a database restored from a logical dump into
-- another cluster: its transaction ids restart below the stored ones, and
-- readers of the global log would then see nothing new. ok is false then.
-- +goose StatementBegin
CREATE FUNCTION conduit.check_transaction_ids(OUT ok boolean, OUT max_stored bigint, OUT next_xid bigint)
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(m.x < pg_snapshot_xmax(pg_current_snapshot()), true),
           m.x::text::bigint,
           pg_snapshot_xmax(pg_current_snapshot())::text::bigint
      FROM (SELECT GREATEST(
                (SELECT e.transaction_id FROM conduit.events e
                  ORDER BY e.transaction_id DESC, e.global_position DESC LIMIT 1),
                (SELECT max(p.checkpoint_tx::text::bigint)::text::xid8 FROM conduit.projections p)) AS x) m;
$$;
-- +goose StatementEnd

-- rebase_transaction_ids repairs a database restored from a logical dump
-- (see check_transaction_ids). Every stored event gets transaction id 0, so
-- the global log's order becomes global_position order, which keeps every
-- stream's order (a stream's later version always took a later position).
-- A projection whose checkpoint covered every event keeps its place; any
-- other is rebuilt (read tables truncated, replay from the start).
-- The immutability trigger is disabled for this transaction only.
--
--   SELECT conduit.rebase_transaction_ids();
-- +goose StatementBegin
CREATE FUNCTION conduit.rebase_transaction_ids() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_max_position bigint;
    v_name text;
    v_rebuilt text[] := '{}';
BEGIN
    LOCK TABLE conduit.events IN EXCLUSIVE MODE;
    SELECT e.global_position INTO v_max_position
      FROM conduit.events e ORDER BY e.transaction_id DESC, e.global_position DESC LIMIT 1;
    FOR v_name IN
        SELECT p.name FROM conduit.projections p
         WHERE EXISTS (SELECT 1 FROM conduit.events e
                        WHERE (e.transaction_id, e.global_position) > (p.checkpoint_tx, p.checkpoint_position))
    LOOP
        PERFORM conduit.rebuild_projection(v_name);
        v_rebuilt := v_rebuilt || v_name;
    END LOOP;
    UPDATE conduit.projections
       SET checkpoint_tx = '0', checkpoint_position = COALESCE(v_max_position, 0), updated_at = now()
     WHERE NOT (name = ANY (v_rebuilt));
    ALTER TABLE conduit.events DISABLE TRIGGER events_immutable;
    UPDATE conduit.events SET transaction_id = '0' WHERE transaction_id <> '0';
    ALTER TABLE conduit.events ENABLE TRIGGER events_immutable;
    RETURN format('rebased %s events; rebuilt projections: %s',
                  (SELECT count(*) FROM conduit.events), array_to_string(v_rebuilt, ', '));
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION conduit.rebase_transaction_ids();
DROP FUNCTION conduit.check_transaction_ids();
DROP FUNCTION conduit.projection_status();
DROP FUNCTION conduit.rebuild_projection(text);
DROP FUNCTION conduit.skip_parked_event(text, uuid);
DROP FUNCTION conduit.retry_parked_event(text, uuid);
DROP TABLE conduit.parked_events;
DROP TABLE conduit.projections;
