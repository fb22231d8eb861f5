package conduit

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
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
// several processes at once: a session advisory lock serializes them. So it
// needs a direct connection to PostgreSQL: through a pooler it returns
// ErrNeedsDirectConnection before taking the lock or changing anything
// (behind PgBouncer in transaction mode the lock would stay with an idle
// server connection). It refuses a pooler in session mode too: it cannot
// tell one mode from the other.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	return MigrateTo(ctx, pool, -1)
}

// MigrateTo migrates up or down to version; 0 removes every Conduit object
// but the conduit schema and its version table; -1 means the latest.
//
// When the database is at version already (for Migrate: nothing pending),
// it changes nothing and takes no lock: a role that may only read
// conduit.goose_db_version (CONNECT, USAGE on the conduit schema, SELECT on
// that table) may run it at start-up. Only when there is work does it create
// the schema if missing and migrate under the lock.
func MigrateTo(ctx context.Context, pool *pgxpool.Pool, version int64) error {
	state, err := migrationState(ctx, pool)
	if err != nil {
		return err
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(migrationLockID), lock.WithLockTimeout(1, 600))
	if err != nil {
		return fmt.Errorf("conduit: migrate: %w", err)
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, Migrations(),
		goose.WithTableName(MigrationTable),
		goose.WithSessionLocker(directSessionLocker{locker}),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		return fmt.Errorf("conduit: migrate: %w", err)
	}

	// What to do, read without the lock. A migration in flight elsewhere
	// shows as pending (each commits its version row with its changes), so
	// nothing is skipped: the work below waits for the lock and goose reads
	// again under it.
	current, pending := int64(0), true // no version table: nothing applied
	if state.VersionTableExists {
		if version < 0 {
			pending, err = provider.HasPending(ctx)
		} else {
			current, _, err = provider.GetVersions(ctx)
		}
		if err != nil {
			return fmt.Errorf("conduit: migrate: read version: %w", err)
		}
	}
	if (version < 0 && !pending) || version == current {
		return nil
	}

	if !state.SchemaExists {
		if err := ensureSchema(ctx, pool); err != nil {
			return fmt.Errorf("conduit: migrate: create schema: %w", err)
		}
	}
	switch {
	case version < 0:
		_, err = provider.Up(ctx)
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

// migrationState refuses a pooler (checkDirectSession) and says whether
// the conduit schema and its version table exist. The pooler is refused
// before anything else, so that Migrate through one fails every time, not
// only on the day a migration is pending; the lock's own connection is
// checked again (directSessionLocker).
func migrationState(ctx context.Context, pool *pgxpool.Pool) (dbgen.MigrationStateGetRow, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return dbgen.MigrationStateGetRow{}, fmt.Errorf("conduit: migrate: %w", err)
	}
	defer conn.Release() // before goose takes connections of its own: a pool of one must do
	if err := checkDirectSession(ctx, conn.Conn()); err != nil {
		return dbgen.MigrationStateGetRow{}, err
	}
	state, err := dbgen.New(conn).MigrationStateGet(ctx)
	if err != nil {
		return state, fmt.Errorf("conduit: migrate: read the catalog: %w", err)
	}
	return state, nil
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

// checkDirectSession returns ErrNeedsDirectConnection unless conn's
// statements run in the server process it was opened with. A direct
// connection keeps its process for life. A pooler answers the opening with
// a process id and cancel key of its own (it must: its clients' cancel
// requests come to it, and it forwards them to whichever server connection
// runs their statement), so the process id pgx keeps from the opening is
// not that of the server process pg_backend_pid() names. The check is
// deterministic, needs no privilege, and passes through proxies that only
// forward bytes (TLS terminators, SSH tunnels).
func checkDirectSession(ctx context.Context, conn *pgx.Conn) error {
	pid, err := dbgen.New(conn).SessionPIDGet(ctx)
	if dberr.Classify(err) == dberr.PreparedStatementMismatch {
		// The check's own statement lost its prepared statement: only a
		// pooler in transaction mode does that.
		return fmt.Errorf("%w: its prepared statements move between server connections (%w)", ErrNeedsDirectConnection, err)
	}
	if err != nil {
		return fmt.Errorf("conduit: migrate: check for a direct connection: %w", err)
	}
	if opened := int64(conn.PgConn().PID()); pid != opened {
		return fmt.Errorf("%w: the connection was opened with process id %d, yet its statements run in server process %d, "+
			"so a pooler stands between: connect Migrate to PostgreSQL itself and keep the pooler for the Store",
			ErrNeedsDirectConnection, opened, pid)
	}
	return nil
}

// directSessionLocker takes goose's session advisory lock only on a direct
// connection (see checkDirectSession), checked on the lock's own connection
// just before the lock. Behind a pooler in transaction mode the lock would
// be taken by whichever server connection ran that statement and stay with
// it, idle in the pool, when the unlock ran elsewhere: it would block every
// later Migrate. A direct session holds the lock in its own server process,
// which releases it at the unlock or when it ends, however it ends.
type directSessionLocker struct{ lock.SessionLocker }

func (l directSessionLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	err := conn.Raw(func(driverConn any) error {
		c, ok := driverConn.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("conduit: migrate: connection of type %T, not pgx's", driverConn)
		}
		return checkDirectSession(ctx, c.Conn())
	})
	if err != nil {
		return err
	}
	return l.SessionLocker.SessionLock(ctx, conn)
}
