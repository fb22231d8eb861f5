-- name: LogHeadGet :one
-- The last committed event in global-log order, on the primary key (no
-- row: the log is empty). Unlike the readers of the log it does not stop at
-- the safe horizon: events of older transactions still open may yet commit
-- before it.
SELECT e.transaction_id, e.global_position
  FROM conduit.events e
 ORDER BY e.transaction_id DESC, e.global_position DESC
 LIMIT 1;
