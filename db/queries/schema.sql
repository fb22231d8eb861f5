-- name: SchemaEnsure :exec
-- Migrate creates the schema before goose runs, so that goose's version
-- table can live in it.
CREATE SCHEMA IF NOT EXISTS conduit;

-- name: SessionPIDGet :one
-- The server process that runs this statement. On a direct connection it
-- is the one the connection was opened with, for as long as it lives;
-- behind a pooler it is not, and Migrate refuses to take its session lock.
SELECT pg_backend_pid()::bigint AS pid;
