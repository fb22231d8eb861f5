-- name: SchemaEnsure :exec
-- Migrate creates the schema before goose runs, so that goose's version
-- table can live in it.
CREATE SCHEMA IF NOT EXISTS conduit;
