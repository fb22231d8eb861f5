-- name: LogHeadGet :one
-- The last committed event in global-log order, on the primary key (no
-- row: the log is empty). Unlike the readers of the log it does not stop at
-- the safe horizon: events of older transactions still open may yet commit
-- before it.
SELECT e.transaction_id, e.global_position
  FROM conduit.events e
 ORDER BY e.transaction_id DESC, e.global_position DESC
 LIMIT 1;

-- name: LogSafeHeadGet :one
-- The last event below the safe horizon (no row: none yet), in one
-- statement: every event a reader can still be shown later sorts after it,
-- because every transaction still running has an id at or above the
-- horizon. A follower of the log that starts here ("from now on") skips
-- nothing that commits late; starting at LogHeadGet could.
SELECT e.transaction_id, e.global_position
  FROM conduit.events e
 WHERE e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY e.transaction_id DESC, e.global_position DESC
 LIMIT 1;
