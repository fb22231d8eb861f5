-- +goose Up

-- lease_lost raises CDI06 for p_name's lease (p_what: 'projection'), which
-- a statement fenced by (owner, epoch) found held by someone else. A
-- projector's batch sends its checkpoint UPDATE and its COMMIT in one round
-- trip: an UPDATE that matched no row must fail, so that the COMMIT after it
-- never runs and the batch's writes roll back. (An UPDATE that returns no
-- row would let them commit.) VOLATILE, so that a call with constant
-- arguments is evaluated only where the query reaches it.
-- +goose StatementBegin
CREATE FUNCTION conduit.lease_lost(p_what text, p_name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'conduit: % %: lease lost', p_what, p_name
        USING ERRCODE = 'CDI06',
              DETAIL = 'Another instance took the lease (it expired, or was released); this transaction rolls back.';
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION conduit.lease_lost(text, text);
