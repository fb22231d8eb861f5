-- +goose Up

-- The application role may name the generation an outbox message goes to.
-- conduit.append_batch_one_outbox (migration 13) reads the current
-- generation once per statement and names it in its INSERT, rather than
-- leaving it to the column's default, conduit.outbox_current_generation(),
-- a PL/pgSQL call per message; but grant_application granted INSERT on the
-- outbox's other columns only. For an application role every batch of
-- appends that enqueued a rule's messages failed ("permission denied for
-- table outbox"), and its appends were sent again one by one: each
-- succeeded, so only the lost batching showed. The single-statement appends
-- and the enqueue now name the generation too.
--
-- Any generation is safe to write to: the relay reads them all, and
-- conduit.outbox_retire truncates one only under a lock no writer holds,
-- when it holds no message the relay has not passed. The outbox's order,
-- transaction_id and position, stays the defaults' alone.
ALTER FUNCTION conduit.grant_application(name) RENAME TO grant_application_00010;
COMMENT ON FUNCTION conduit.grant_application_00010(name) IS
    'Migration 10''s conduit.grant_application: called by the current one, and kept so that migrating below version 16 restores it.';
-- (OR REPLACE only for sqlc, which does not follow the rename.)
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION conduit.grant_application(p_role name) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conduit.grant_application_00010(p_role);
    EXECUTE format('GRANT INSERT (generation) ON conduit.outbox TO %I', p_role);
END
$$;
-- +goose StatementEnd

REVOKE EXECUTE ON FUNCTION conduit.grant_application_00010(name) FROM PUBLIC;

-- Roles granted before this migration keep what they could do: INSERT
-- (generation) for whoever may insert a message (INSERT (message_id)).
-- +goose StatementBegin
DO $$
DECLARE
    v_role regrole;
BEGIN
    FOR v_role IN SELECT DISTINCT a.grantee::regrole
                    FROM pg_attribute att, aclexplode(att.attacl) a
                   WHERE att.attrelid = 'conduit.outbox'::regclass AND att.attname = 'message_id'
                     AND a.privilege_type = 'INSERT' AND a.grantee <> 0 LOOP
        EXECUTE format('GRANT INSERT (generation) ON conduit.outbox TO %s', v_role);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE
    v_role regrole;
BEGIN
    FOR v_role IN SELECT DISTINCT a.grantee::regrole
                    FROM pg_attribute att, aclexplode(att.attacl) a
                   WHERE att.attrelid = 'conduit.outbox'::regclass AND att.attname = 'generation'
                     AND a.privilege_type = 'INSERT' AND a.grantee <> 0 LOOP
        EXECUTE format('REVOKE INSERT (generation) ON conduit.outbox FROM %s', v_role);
    END LOOP;
END
$$;
-- +goose StatementEnd
DROP FUNCTION conduit.grant_application(name);
GRANT EXECUTE ON FUNCTION conduit.grant_application_00010(name) TO PUBLIC;
ALTER FUNCTION conduit.grant_application_00010(name) RENAME TO grant_application;
COMMENT ON FUNCTION conduit.grant_application(name) IS NULL;
