-- name: SchemaEnsure :exec
-- Migrate creates the schema before goose runs, so that goose's version
-- table can live in it; only when it is missing, since CREATE SCHEMA needs
-- CREATE on the database even when IF NOT EXISTS finds the schema.
CREATE SCHEMA IF NOT EXISTS conduit;

-- name: SessionPIDGet :one
-- The server process that runs this statement. On a direct connection it
-- is the one the connection was opened with, for as long as it lives;
-- behind a pooler it is not, and Migrate refuses to take its session lock.
SELECT pg_backend_pid()::bigint AS pid;

-- name: MigrationStateGet :one
-- Whether the conduit schema and its goose version table exist, from the
-- catalog, which every role may read: Migrate decides what it has to do
-- before it needs any privilege beyond reading the version table.
SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'conduit') AS schema_exists,
       EXISTS (SELECT FROM pg_catalog.pg_tables
                WHERE schemaname = 'conduit' AND tablename = 'goose_db_version') AS version_table_exists;
