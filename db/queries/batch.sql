-- name: EventAppendBatch :many
-- Several appends in one statement (one implicit transaction): see
-- conduit.append_batch. The streams are distinct. One row per append, in
-- call order.
SELECT b.r_append::integer AS append_index,
       b.r_status::text AS status,
       COALESCE(b.r_stream_version, 0)::bigint AS stream_version,
       COALESCE(b.r_transaction_id, '0')::xid8 AS transaction_id,
       COALESCE(b.r_global_position, 0)::bigint AS global_position
  FROM conduit.append_batch(sqlc.arg(streams)::text[], sqlc.arg(expected)::bigint[],
                            sqlc.arg(event_appends)::integer[], sqlc.arg(event_ids)::text[]::uuid[], sqlc.arg(types)::text[], sqlc.arg(data)::text[],
                            sqlc.arg(metadata)::text[],
                            sqlc.arg(message_appends)::integer[], sqlc.arg(message_ids)::text[]::uuid[],
                            sqlc.arg(topics)::text[], sqlc.arg(keys)::text[], sqlc.arg(payloads)::bytea[],
                            sqlc.arg(headers)::text[]) AS b;

-- name: EventAppendBatchOne :many
-- EventAppendBatch for a batch of single-event appends without outbox
-- messages: see conduit.append_batch_one. The streams are distinct. One row
-- per append, in call order.
SELECT b.r_append::integer AS append_index,
       b.r_status::text AS status,
       COALESCE(b.r_stream_version, 0)::bigint AS stream_version,
       COALESCE(b.r_transaction_id, '0')::xid8 AS transaction_id,
       COALESCE(b.r_global_position, 0)::bigint AS global_position
  FROM conduit.append_batch_one(sqlc.arg(streams)::text[], sqlc.arg(expected)::bigint[],
                                sqlc.arg(event_ids)::text[]::uuid[], sqlc.arg(types)::text[], sqlc.arg(data)::text[],
                                sqlc.arg(metadata)::text[]) AS b;

-- name: EventAppendBatchOneOutbox :many
-- EventAppendBatchOne for a batch of single-event appends some of which
-- enqueue outbox messages: see conduit.append_batch_one_outbox. The streams
-- are distinct. One row per append, in call order.
SELECT b.r_append::integer AS append_index,
       b.r_status::text AS status,
       COALESCE(b.r_stream_version, 0)::bigint AS stream_version,
       COALESCE(b.r_transaction_id, '0')::xid8 AS transaction_id,
       COALESCE(b.r_global_position, 0)::bigint AS global_position
  FROM conduit.append_batch_one_outbox(sqlc.arg(streams)::text[], sqlc.arg(expected)::bigint[],
                                       sqlc.arg(event_ids)::text[]::uuid[], sqlc.arg(types)::text[], sqlc.arg(data)::text[],
                                       sqlc.arg(metadata)::text[],
                                       sqlc.arg(message_appends)::integer[], sqlc.arg(message_ids)::text[]::uuid[],
                                       sqlc.arg(topics)::text[], sqlc.arg(keys)::text[], sqlc.arg(payloads)::bytea[],
                                       sqlc.arg(headers)::text[]) AS b;
