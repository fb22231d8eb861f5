-- +goose Up

-- What an online rebuild can rebuild, checked before any work, and a swap
-- that carries what a read table has and bounds how long readers wait.
--
-- check_online_rebuild raises CDI05 (the Go error ErrCannotRebuildOnline)
-- naming the table and the reason when a read table of the projection is
-- one the swap cannot replace soundly, for the role that calls it (or when
-- the projection declares no read tables):
--   - not an ordinary table (a partitioned table, a view), a table in
--     schema conduit or conduit_shadow, or a table with inheritance
--     children or parents;
--   - not owned by the calling role or a role it is a member of (the swap
--     renames and drops the live table, which only its owner may do);
--   - an object that depends on the table and that DROP TABLE would refuse
--     to drop without CASCADE: a view or materialized view, a foreign key
--     of another table that references it, a function whose SQL body names
--     it, a column of its row type; such an object would keep pointing at
--     the old table;
--   - a foreign key of its own, a trigger, row-level security or a policy,
--     or a publication that lists it: CREATE TABLE … (LIKE … INCLUDING ALL)
--     copies none of these, so the swapped-in table would silently lack
--     them.
-- Columns, defaults (serial columns share their sequence, which the swap
-- hands to the new table), identity columns, NOT NULL and CHECK
-- constraints, indexes (primary key and unique constraints included; the
-- copies carry the live names during the replay too, so that ON CONFLICT ON
-- CONSTRAINT works), comments, extended statistics, storage settings and privileges (the
-- table's and its columns') are carried, under the live table's names, and
-- the new table gets the live one's owner.
--
-- rebuild_projection_online checks as its caller; the projector checks as
-- its own role before its first shadow batch, and the swap checks again
-- (an object made during the replay).
-- +goose StatementBegin
CREATE FUNCTION conduit.check_online_rebuild(p_name text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_tables text[];
    v_table  text;
    v_rel    regclass;
    v_class  record;
    v_what   text;
BEGIN
    SELECT p.read_tables INTO v_tables FROM conduit.projections p WHERE p.name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'conduit: no projection named %', p_name
            USING ERRCODE = 'CDI02',
                  HINT = 'A projection is registered when its projector first runs; see conduit.projection_status.';
    END IF;
    IF cardinality(v_tables) = 0 THEN
        RAISE EXCEPTION 'conduit: cannot rebuild % online: it declares no read tables', p_name
            USING ERRCODE = 'CDI05',
                  HINT = 'Declare them: NewRouter(name, tables...) or ReadTableOwner.';
    END IF;
    FOREACH v_table IN ARRAY v_tables LOOP
        v_rel := to_regclass(v_table);
        IF v_rel IS NULL THEN
            RAISE EXCEPTION 'conduit: cannot rebuild % online: read table % does not exist', p_name, v_table
                USING ERRCODE = 'CDI05';
        END IF;
        SELECT c.relkind, n.nspname, c.relowner, c.relrowsecurity, c.reltype INTO v_class
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = v_rel;
        IF v_class.relkind <> 'r' OR v_class.nspname IN ('conduit', 'conduit_shadow') THEN
            RAISE EXCEPTION 'conduit: cannot rebuild % online: % is not an ordinary read table', p_name, v_rel
                USING ERRCODE = 'CDI05',
                      HINT = 'Only ordinary tables outside the conduit schemas are rebuilt online; use conduit.rebuild_projection.';
        END IF;
        IF NOT pg_has_role(current_user, v_class.relowner, 'USAGE') THEN
            RAISE EXCEPTION 'conduit: cannot rebuild % online: role % does not own % (its owner is %)',
                            p_name, current_user, v_rel, v_class.relowner::regrole
                USING ERRCODE = 'CDI05',
                      HINT = 'The swap renames and drops the live table, which only its owner may do: run the '
                             'projector (and this call) as a role that owns the read tables or is a member of '
                             'their owner, or rebuild with conduit.rebuild_projection.';
        END IF;
        SELECT string_agg(DISTINCT CASE
                   WHEN d.classid = 'pg_rewrite'::regclass THEN
                       (SELECT format('%s %s', CASE c.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END,
                                      c.oid::regclass)
                          FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class WHERE r.oid = d.objid)
                   ELSE pg_describe_object(d.classid, d.objid, 0)
               END, ', ')
          INTO v_what
          FROM pg_depend d
         WHERE d.deptype = 'n'
           AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid = v_rel)
                OR (d.refclassid = 'pg_type'::regclass AND d.refobjid = v_class.reltype))
           -- Not the table's own objects (a CHECK constraint depends on
           -- its columns), which the copy has and DROP TABLE drops.
           AND NOT CASE d.classid
               WHEN 'pg_constraint'::regclass THEN
                   EXISTS (SELECT 1 FROM pg_constraint co WHERE co.oid = d.objid AND co.conrelid = v_rel)
               WHEN 'pg_attrdef'::regclass THEN
                   EXISTS (SELECT 1 FROM pg_attrdef ad WHERE ad.oid = d.objid AND ad.adrelid = v_rel)
               WHEN 'pg_rewrite'::regclass THEN
                   EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.oid = d.objid AND r.ev_class = v_rel)
               WHEN 'pg_trigger'::regclass THEN
                   EXISTS (SELECT 1 FROM pg_trigger t WHERE t.oid = d.objid AND t.tgrelid = v_rel)
               WHEN 'pg_policy'::regclass THEN
                   EXISTS (SELECT 1 FROM pg_policy po WHERE po.oid = d.objid AND po.polrelid = v_rel)
               WHEN 'pg_statistic_ext'::regclass THEN
                   EXISTS (SELECT 1 FROM pg_statistic_ext st WHERE st.oid = d.objid AND st.stxrelid = v_rel)
               WHEN 'pg_class'::regclass THEN
                   EXISTS (SELECT 1 FROM pg_index x WHERE x.indexrelid = d.objid AND x.indrelid = v_rel)
               ELSE false
           END;
        IF v_what IS NOT NULL THEN
            RAISE EXCEPTION 'conduit: cannot rebuild % online: % depends on it (%)', p_name, v_rel, v_what
                USING ERRCODE = 'CDI05',
                      HINT = 'They would keep pointing at the old table, which the swap could not drop. Drop them '
                             'for the rebuild and create them again after, or use conduit.rebuild_projection.';
        END IF;
        SELECT string_agg(v.what, ', ') INTO v_what
          FROM (SELECT format('foreign key %I', co.conname) AS what
                  FROM pg_constraint co WHERE co.conrelid = v_rel AND co.contype = 'f'
                UNION ALL
                SELECT format('trigger %I', t.tgname) FROM pg_trigger t WHERE t.tgrelid = v_rel AND NOT t.tgisinternal
                UNION ALL
                SELECT 'row-level security' WHERE v_class.relrowsecurity
                UNION ALL
                SELECT format('policy %I', po.polname) FROM pg_policy po WHERE po.polrelid = v_rel
                UNION ALL
                SELECT 'inheritance' WHERE EXISTS (SELECT 1 FROM pg_inherits i WHERE v_rel IN (i.inhrelid, i.inhparent))
                UNION ALL
                SELECT format('publication %I', pu.pubname)
                  FROM pg_publication_rel pr JOIN pg_publication pu ON pu.oid = pr.prpubid WHERE pr.prrelid = v_rel) v;
        IF v_what IS NOT NULL THEN
            RAISE EXCEPTION 'conduit: cannot rebuild % online: % has % that the new table would not have', p_name, v_rel, v_what
                USING ERRCODE = 'CDI05',
                      HINT = 'CREATE TABLE (LIKE … INCLUDING ALL) copies no foreign keys, triggers, policies or '
                             'publications: use conduit.rebuild_projection, or drop them for the rebuild.';
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd
COMMENT ON FUNCTION conduit.check_online_rebuild(text) IS
    'Raises CDI05 when a read table of the projection cannot be rebuilt online by the calling role; see migration 10.';

-- copy_table_privileges makes p_to's privileges (the table's and its
-- columns') exactly p_from's. Internal to the online rebuild.
-- +goose StatementBegin
CREATE FUNCTION conduit.copy_table_privileges(p_from regclass, p_to regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_acl record;
BEGIN
    FOR v_acl IN SELECT DISTINCT a.grantee
                   FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = p_to AND a.grantee <> c.relowner LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %s', p_to,
                       CASE WHEN v_acl.grantee = 0 THEN 'PUBLIC' ELSE v_acl.grantee::regrole::text END);
    END LOOP;
    FOR v_acl IN SELECT a.grantee, a.privilege_type, a.is_grantable
                   FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = p_from AND a.grantee <> c.relowner LOOP
        EXECUTE format('GRANT %s ON %s TO %s%s', v_acl.privilege_type, p_to,
                       CASE WHEN v_acl.grantee = 0 THEN 'PUBLIC' ELSE v_acl.grantee::regrole::text END,
                       CASE WHEN v_acl.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
    FOR v_acl IN SELECT at.attname, a.grantee, a.privilege_type, a.is_grantable
                   FROM pg_attribute at, aclexplode(at.attacl) a
                  WHERE at.attrelid = p_from AND at.attnum > 0 AND NOT at.attisdropped LOOP
        EXECUTE format('GRANT %s (%I) ON %s TO %s%s', v_acl.privilege_type, v_acl.attname, p_to,
                       CASE WHEN v_acl.grantee = 0 THEN 'PUBLIC' ELSE v_acl.grantee::regrole::text END,
                       CASE WHEN v_acl.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- shadow_index_pairs pairs a shadow copy's indexes with its live table's:
-- LIKE makes the copy's in the order of the live table's (by oid); paired
-- so where their definitions agree. Internal to the online rebuild.
-- +goose StatementBegin
CREATE FUNCTION conduit.shadow_index_pairs(p_live regclass, p_copy regclass)
RETURNS TABLE (copy regclass, live regclass, live_name name)
LANGUAGE sql STABLE AS $$
WITH l AS (SELECT x.indexrelid, x.indisunique, x.indisprimary, row_number() OVER (ORDER BY x.indexrelid) AS n
             FROM pg_index x WHERE x.indrelid = p_live),
     s AS (SELECT x.indexrelid, x.indisunique, x.indisprimary, row_number() OVER (ORDER BY x.indexrelid) AS n
             FROM pg_index x WHERE x.indrelid = p_copy)
SELECT s.indexrelid::regclass, l.indexrelid::regclass, c.relname
  FROM l JOIN s USING (n, indisunique, indisprimary) JOIN pg_class c ON c.oid = l.indexrelid
 WHERE regexp_replace(pg_get_indexdef(l.indexrelid), '^.* USING ', '')
     = regexp_replace(pg_get_indexdef(s.indexrelid), '^.* USING ', '');
$$;
-- +goose StatementEnd

-- rebuild_projection_online checks first (check_online_rebuild: nothing is
-- made when it refuses), then makes the shadow copies as migration 9's
-- version does, gives them the live tables' privileges (so a projector
-- whose role may write the live tables may write the copies), and starts
-- their identity columns where the live ones are. Migration 9's version is
-- kept under another name and called.
ALTER FUNCTION conduit.rebuild_projection_online(text) RENAME TO rebuild_projection_online_00009;
COMMENT ON FUNCTION conduit.rebuild_projection_online_00009(text) IS
    'Migration 9''s conduit.rebuild_projection_online: called by the current one, and kept so that migrating below version 10 restores it.';
-- (OR REPLACE only for sqlc, which does not follow the rename.)
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

-- swap_shadow_tables first checks again (check_online_rebuild) and makes
-- the copies' privileges and table comments exactly the live tables', then
-- takes every live table's ACCESS EXCLUSIVE lock, in one statement, each
-- wait bounded by the caller's lock_timeout divided by the number of tables
-- (readers queue behind a waiting swap: this bounds their wait; a swap that
-- times out is retried later), swaps as migration 9's version does (kept
-- under another name and called), and gives the new tables the live ones'
-- index, constraint and identity sequence names, their identity sequences
-- the live ones' values where higher, and the live tables' owner.
ALTER FUNCTION conduit.swap_shadow_tables(text) RENAME TO swap_shadow_tables_00009;
COMMENT ON FUNCTION conduit.swap_shadow_tables_00009(text) IS
    'Migration 9''s conduit.swap_shadow_tables: called by the current one, and kept so that migrating below version 10 restores it.';
-- (OR REPLACE only for sqlc, which does not follow the rename.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.swap_shadow_tables(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_tables  text[];
    v_shadow  text[];
    v_budget  text := current_setting('lock_timeout');
    v_aside   regclass[] := '{}';
    v_renames text[] := '{}';
    v_owners  text[] := '{}';
    v_seqs    regclass[] := '{}';
    v_seq     record;
    v_idx     record;
BEGIN
    SELECT p.read_tables, p.shadow_tables INTO v_tables, v_shadow
      FROM conduit.projections p WHERE p.name = p_name;
    IF v_shadow IS NULL THEN
        RETURN;
    END IF;
    -- Before the locks, to keep them short (DROP TABLE still refuses an
    -- object made on a live table meanwhile that depends on it).
    PERFORM conduit.check_online_rebuild(p_name);
    FOR i IN 1 .. cardinality(v_tables) LOOP
        PERFORM conduit.copy_table_privileges(v_tables[i]::regclass, v_shadow[i]::regclass);
        -- (LIKE … INCLUDING COMMENTS copies the columns' comments, not the
        -- table's.)
        EXECUTE format('COMMENT ON TABLE %s IS %L', v_shadow[i]::regclass,
                       obj_description(v_tables[i]::regclass, 'pg_class'));
        -- The copy's indexes take the live ones' names (constraints
        -- follow their indexes) once the live ones have stepped aside.
        FOR v_idx IN SELECT * FROM conduit.shadow_index_pairs(v_tables[i]::regclass, v_shadow[i]::regclass) LOOP
            v_aside := v_aside || v_idx.live;
            v_renames := v_renames || ARRAY[v_idx.copy::oid::text, v_idx.live_name];
        END LOOP;
        FOR v_seq IN SELECT pg_get_serial_sequence(v_shadow[i], a.attname)::regclass AS copy,
                            pg_get_serial_sequence(v_tables[i], a.attname)::regclass AS live
                       FROM pg_attribute a
                      WHERE a.attrelid = v_shadow[i]::regclass AND a.attidentity <> '' LOOP
            v_seqs := v_seqs || ARRAY[v_seq.copy, v_seq.live];
            v_renames := v_renames || ARRAY[v_seq.copy::oid::text,
                                            (SELECT c.relname FROM pg_class c WHERE c.oid = v_seq.live)::text];
        END LOOP;
        v_owners := v_owners || ARRAY[v_shadow[i]::regclass::oid::text,
                                      (SELECT c.relowner::regrole::text FROM pg_class c
                                        WHERE c.oid = v_tables[i]::regclass)];
    END LOOP;

    -- From here on readers of the live tables wait.
    IF v_budget <> '0' AND cardinality(v_tables) > 1 THEN
        PERFORM set_config('lock_timeout',
                           GREATEST(extract(epoch FROM v_budget::interval) * 1000 / cardinality(v_tables), 10)::int::text,
                           true);
    END IF;
    EXECUTE 'LOCK TABLE ' || (SELECT string_agg(t::regclass::text, ', ') FROM unnest(v_tables) AS t)
         || ' IN ACCESS EXCLUSIVE MODE';
    PERFORM set_config('lock_timeout', v_budget, true);
    FOR i IN 1 .. cardinality(v_aside) LOOP
        EXECUTE format('ALTER INDEX %s RENAME TO %I', v_aside[i], 'conduit_old_' || v_aside[i]::oid);
    END LOOP;
    FOR i IN 1 .. cardinality(v_seqs) / 2 LOOP
        IF pg_sequence_last_value(v_seqs[2*i]) > COALESCE(pg_sequence_last_value(v_seqs[2*i-1]), 0) THEN
            PERFORM setval(v_seqs[2*i-1], pg_sequence_last_value(v_seqs[2*i]));
        END IF;
    END LOOP;
    PERFORM conduit.swap_shadow_tables_00009(p_name);
    -- The live tables, their indexes and sequences are dropped: their
    -- names are free.
    FOR i IN 1 .. cardinality(v_renames) / 2 LOOP
        CONTINUE WHEN (SELECT c.relname FROM pg_class c WHERE c.oid = v_renames[2*i-1]::oid) = v_renames[2*i];
        EXECUTE format('ALTER %s %s RENAME TO %I',
                       CASE (SELECT c.relkind FROM pg_class c WHERE c.oid = v_renames[2*i-1]::oid)
                            WHEN 'S' THEN 'SEQUENCE' ELSE 'INDEX' END,
                       v_renames[2*i-1]::oid::regclass, v_renames[2*i]);
    END LOOP;
    FOR i IN 1 .. cardinality(v_owners) / 2 LOOP
        IF (SELECT c.relowner::regrole::text FROM pg_class c WHERE c.oid = v_owners[2*i-1]::oid) <> v_owners[2*i] THEN
            EXECUTE format('ALTER TABLE %s OWNER TO %s', v_owners[2*i-1]::oid::regclass, v_owners[2*i]);
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- grant_application also grants EXECUTE on the functions above that the
-- new versions call. Migration 9's version is kept under another name and
-- called (it grants the new rebuild_projection_online and
-- swap_shadow_tables by name).
ALTER FUNCTION conduit.grant_application(name) RENAME TO grant_application_00009;
COMMENT ON FUNCTION conduit.grant_application_00009(name) IS
    'Migration 9''s conduit.grant_application: called by the current one, and kept so that migrating below version 10 restores it.';
-- (OR REPLACE only for sqlc, which does not follow the rename.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.grant_application(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conduit.grant_application_00009(p_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION '
                   'conduit.rebuild_projection_online_00009(text), '
                   'conduit.swap_shadow_tables_00009(text), '
                   'conduit.copy_table_privileges(regclass, regclass) '
                   'TO %I', p_role);
END
$$;
-- +goose StatementEnd

-- Not for everyone: granted by grant_application. check_online_rebuild
-- reads the catalogs only: anyone's.
REVOKE EXECUTE ON FUNCTION
    conduit.rebuild_projection_online(text),
    conduit.swap_shadow_tables(text),
    conduit.copy_table_privileges(regclass, regclass),
    conduit.grant_application_00009(name)
    FROM PUBLIC;
-- (shadow_index_pairs reads the catalogs only: anyone's.)

-- Roles granted before this migration keep what they could do: EXECUTE on
-- the new versions for whoever held it on migration 9's.
-- +goose StatementBegin
DO $$
DECLARE
    v_role regrole;
BEGIN
    FOR v_role IN SELECT DISTINCT a.grantee::regrole
                    FROM pg_proc f, aclexplode(f.proacl) a
                   WHERE f.oid = 'conduit.rebuild_projection_online_00009(text)'::regprocedure
                     AND a.grantee <> 0 AND a.grantee <> f.proowner LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION conduit.rebuild_projection_online(text), '
                       'conduit.swap_shadow_tables(text), conduit.copy_table_privileges(regclass, regclass) TO %s',
                       v_role);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION conduit.grant_application(name);
GRANT EXECUTE ON FUNCTION conduit.grant_application_00009(name) TO PUBLIC;
ALTER FUNCTION conduit.grant_application_00009(name) RENAME TO grant_application;
COMMENT ON FUNCTION conduit.grant_application(name) IS NULL;
DROP FUNCTION conduit.swap_shadow_tables(text);
ALTER FUNCTION conduit.swap_shadow_tables_00009(text) RENAME TO swap_shadow_tables;
COMMENT ON FUNCTION conduit.swap_shadow_tables(text) IS NULL;
DROP FUNCTION conduit.rebuild_projection_online(text);
ALTER FUNCTION conduit.rebuild_projection_online_00009(text) RENAME TO rebuild_projection_online;
COMMENT ON FUNCTION conduit.rebuild_projection_online(text) IS NULL;
DROP FUNCTION conduit.shadow_index_pairs(regclass, regclass);
DROP FUNCTION conduit.copy_table_privileges(regclass, regclass);
DROP FUNCTION conduit.check_online_rebuild(text);
