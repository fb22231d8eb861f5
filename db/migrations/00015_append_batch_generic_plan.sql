-- +goose Up

-- The batch functions keep one plan. PL/pgSQL caches the plan of each of
-- its statements per session and chooses, at every call, between a custom
-- plan made for the call's arrays (planned again each time) and the generic
-- plan (made once). For batches of a few appends the planner's estimates
-- made custom plans look cheaper, so a session whose first batches were
-- small planned the whole statement again at every batch: two to three
-- times the server's CPU per batch of 2 to 6 appends. The statements were
-- written for the generic plan (its estimates do not depend on the arrays'
-- contents: they hold one entry per append, and the streams' heads are
-- read by index), so it is the one to use, whatever the batch's size.
ALTER FUNCTION conduit.append_batch(text[], bigint[], integer[], uuid[], text[], text[], text[],
                                    integer[], uuid[], text[], text[], bytea[], text[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION conduit.append_batch_one(text[], bigint[], uuid[], text[], text[], text[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION conduit.append_batch_one_outbox(text[], bigint[], uuid[], text[], text[], text[],
                                               integer[], uuid[], text[], text[], bytea[], text[])
    SET plan_cache_mode = force_generic_plan;

-- +goose Down
ALTER FUNCTION conduit.append_batch(text[], bigint[], integer[], uuid[], text[], text[], text[],
                                    integer[], uuid[], text[], text[], bytea[], text[])
    RESET plan_cache_mode;
ALTER FUNCTION conduit.append_batch_one(text[], bigint[], uuid[], text[], text[], text[])
    RESET plan_cache_mode;
ALTER FUNCTION conduit.append_batch_one_outbox(text[], bigint[], uuid[], text[], text[], text[],
                                               integer[], uuid[], text[], text[], bytea[], text[])
    RESET plan_cache_mode;
