package conduit

import (
	"context"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/conduit-es/conduit/internal/dberr"
	"github.com/conduit-es/conduit/internal/dbgen"
)

//go:embed db/migrations/*.sql
var migrationFiles embed.FS

// MigrationTable is the goose version table Conduit's own migrations use,
// apart from any goose_db_version table of yours.
const MigrationTable = "conduit.goose_db_version"

// migrationLockID is the session advisory lock id that serializes concurrent
// Migrate calls, distinct from goose's default: the bytes of "conduit"
// followed by 0x01.
const migrationLockID int64 = 0x636f6e6475697401

// Migrations returns Conduit's goose migrations as an fs.FS whose root holds
// the numbered .sql files, for your own goose pipeline. Give them their own
// version table (see MigrationTable): Conduit's version numbers would clash
// with yours. goose creates its version table before the first migration
// runs, so with MigrationTable run CREATE SCHEMA IF NOT EXISTS conduit
// first (Migrate does).
func Migrations() fs.FS {
	sub, err := fs.Sub(migrationFiles, "db/migrations")
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	return sub
}

// Migrate applies every pending Conduit migration. It is safe to run from
// several processes at once: a session advisory lock serializes them, so it
// needs a direct connection (not PgBouncer in transaction mode).
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	return MigrateTo(ctx, pool, -1)
}

// MigrateTo migrates up or down to version; 0 removes every Conduit object
// but the conduit schema and its version table; -1 means the latest.
func MigrateTo(ctx context.Context, pool *pgxpool.Pool, version int64) error {
	if err := ensureSchema(ctx, pool); err != nil {
		return fmt.Errorf("conduit: migrate: create schema: %w", err)
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(migrationLockID), lock.WithLockTimeout(1, 600))
	if err != nil {
		return fmt.Errorf("conduit: migrate: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, Migrations(),
		goose.WithTableName(MigrationTable),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		return fmt.Errorf("conduit: migrate: %w", err)
	}
	current, err := provider.GetDBVersion(ctx)
	if err != nil {
		return fmt.Errorf("conduit: migrate: read version: %w", err)
	}
	switch {
	case version < 0:
		_, err = provider.Up(ctx)
	case version == current:
	case version > current:
		_, err = provider.UpTo(ctx, version)
	default:
		_, err = provider.DownTo(ctx, version)
	}
	if err != nil {
		return fmt.Errorf("conduit: migrate to %d: %w", version, err)
	}
	return nil
}

// ensureSchema creates the conduit schema. Two deploys doing it at once may
// both pass IF NOT EXISTS; the loser's unique violation means it exists.
func ensureSchema(ctx context.Context, pool *pgxpool.Pool) error {
	err := dbgen.New(pool).SchemaEnsure(ctx)
	if dberr.Classify(err) == dberr.UniqueViolation {
		return nil
	}
	return err
}
