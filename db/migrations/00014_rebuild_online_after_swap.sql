-- +goose Up

-- rebuild_projection_online takes the projection's row first, and checks
-- after (migration 10's version checked first and took the row after,
-- in migration 9's). A swap in progress holds that row (the projector's
-- batch transaction locks it): the call now waits for the swap to end and
-- then checks with a snapshot taken after it. Checking first, a call could
-- take its snapshot before a swap committed and look the read table's name
-- up after (names are looked up in the latest catalogs): it saw the new
-- live table still in conduit_shadow and refused it as "not an ordinary
-- read table". Same signature, same privileges (CREATE OR REPLACE keeps
-- them); the rest is migration 10's.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.rebuild_projection_online(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tables text[];
    v_shadow text[];
    v_seq    record;
    v_idx    record;
BEGIN
    -- (No row: check_online_rebuild says so.)
    PERFORM 1 FROM conduit.projections p WHERE p.name = p_name FOR UPDATE;
    PERFORM conduit.check_online_rebuild(p_name);
    PERFORM conduit.rebuild_projection_online_00009(p_name);
    SELECT p.read_tables, p.shadow_tables INTO v_tables, v_shadow FROM conduit.projections p WHERE p.name = p_name;
    FOR i IN 1 .. cardinality(v_tables) LOOP
        PERFORM conduit.copy_table_privileges(v_tables[i]::regclass, v_shadow[i]::regclass);
        -- The live names (ON CONFLICT ON CONSTRAINT name works on the copy),
        -- where conduit_shadow has no relation of the name already.
        FOR v_idx IN SELECT * FROM conduit.shadow_index_pairs(v_tables[i]::regclass, v_shadow[i]::regclass) LOOP
            IF to_regclass(format('conduit_shadow.%I', v_idx.live_name)) IS NULL THEN
                EXECUTE format('ALTER INDEX %s RENAME TO %I', v_idx.copy, v_idx.live_name);
            END IF;
        END LOOP;
        FOR v_seq IN SELECT pg_get_serial_sequence(v_shadow[i], a.attname)::regclass AS copy,
                            pg_get_serial_sequence(v_tables[i], a.attname)::regclass AS live
                       FROM pg_attribute a
                      WHERE a.attrelid = v_shadow[i]::regclass AND a.attidentity <> '' LOOP
            IF pg_sequence_last_value(v_seq.live) IS NOT NULL THEN
                PERFORM setval(v_seq.copy, pg_sequence_last_value(v_seq.live));
            END IF;
        END LOOP;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- Migration 10's version.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.rebuild_projection_online(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tables text[];
    v_shadow text[];
    v_seq    record;
    v_idx    record;
BEGIN
    PERFORM conduit.check_online_rebuild(p_name);
    PERFORM conduit.rebuild_projection_online_00009(p_name);
    SELECT p.read_tables, p.shadow_tables INTO v_tables, v_shadow FROM conduit.projections p WHERE p.name = p_name;
    FOR i IN 1 .. cardinality(v_tables) LOOP
        PERFORM conduit.copy_table_privileges(v_tables[i]::regclass, v_shadow[i]::regclass);
        -- The live names (ON CONFLICT ON CONSTRAINT name works on the copy),
        -- where conduit_shadow has no relation of the name already.
        FOR v_idx IN SELECT * FROM conduit.shadow_index_pairs(v_tables[i]::regclass, v_shadow[i]::regclass) LOOP
            IF to_regclass(format('conduit_shadow.%I', v_idx.live_name)) IS NULL THEN
                EXECUTE format('ALTER INDEX %s RENAME TO %I', v_idx.copy, v_idx.live_name);
            END IF;
        END LOOP;
        FOR v_seq IN SELECT pg_get_serial_sequence(v_shadow[i], a.attname)::regclass AS copy,
                            pg_get_serial_sequence(v_tables[i], a.attname)::regclass AS live
                       FROM pg_attribute a
                      WHERE a.attrelid = v_shadow[i]::regclass AND a.attidentity <> '' LOOP
            IF pg_sequence_last_value(v_seq.live) IS NOT NULL THEN
                PERFORM setval(v_seq.copy, pg_sequence_last_value(v_seq.live));
            END IF;
        END LOOP;
    END LOOP;
END
$$;
-- +goose StatementEnd
