package conduit_test

import (
	"context"
	"io/fs"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// emptyDB returns the URL of a fresh database with no Conduit objects,
// dropped at cleanup.
func emptyDB(t *testing.T) string {
	t.Helper()
	noop := func(context.Context, *pgxpool.Pool) error { return nil }
	return pgtest.URLFor(t, pgtest.NewDB(t, fstest.MapFS{}, noop))
}

// regclass reports whether a relation or function (kind "class" or "proc")
// exists.
func exists(t *testing.T, ctx context.Context, pool *pgxpool.Pool, kind, name string) bool {
	t.Helper()
	var ok bool
	if err := pool.QueryRow(ctx, "SELECT to_reg"+kind+"($1) IS NOT NULL", name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func versionRows(t *testing.T, ctx context.Context, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+conduit.MigrationTable).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// latestMigration returns the highest migration version.
func latestMigration(t *testing.T) int64 {
	t.Helper()
	names, err := fs.Glob(conduit.Migrations(), "*.sql")
	if err != nil || len(names) == 0 {
		t.Fatalf("migrations = %v, %v", names, err)
	}
	last := names[len(names)-1]
	v, err := strconv.ParseInt(last[:strings.IndexByte(last, '_')], 10, 64)
	if err != nil {
		t.Fatalf("migration %s: %v", last, err)
	}
	return v
}

func TestMigrations(t *testing.T) {
	t.Parallel()
	if conduit.MigrationTable != "conduit.goose_db_version" {
		t.Fatalf("MigrationTable = %q", conduit.MigrationTable)
	}
	b, err := fs.ReadFile(conduit.Migrations(), "00001_events.sql")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "-- +goose Up") || !strings.Contains(string(b), "-- +goose Down") {
		t.Fatal("00001_events.sql lacks goose annotations")
	}
	names, err := fs.Glob(conduit.Migrations(), "*.sql")
	if err != nil || len(names) == 0 || names[0] != "00001_events.sql" {
		t.Fatalf("migrations = %v, %v", names, err)
	}
}

// Migrate on a fresh database, again (a no-op), down to 0 and up again.
func TestMigrateUpDownUp(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pool := pgtest.Connect(t, emptyDB(t))

	if err := conduit.Migrate(ctx, pool); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	for _, obj := range []string{"conduit.events", "conduit.goose_db_version"} {
		if !exists(t, ctx, pool, "class", obj) {
			t.Fatalf("%s missing after Migrate", obj)
		}
	}
	if !exists(t, ctx, pool, "procedure", "conduit.append_to_stream(text,bigint,uuid[],text[],text[],text[])") {
		t.Fatal("conduit.append_to_stream missing after Migrate")
	}
	if exists(t, ctx, pool, "class", "public.goose_db_version") || exists(t, ctx, pool, "class", "goose_db_version") {
		t.Fatal("Migrate created a goose_db_version table outside the conduit schema")
	}
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, "kept", conduit.NoStream, mustEvent(t, "e", 1)); err != nil {
		t.Fatal(err)
	}

	// Again: nothing changes.
	rows := versionRows(t, ctx, pool)
	if err := conduit.Migrate(ctx, pool); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	latest := latestMigration(t)
	if err := conduit.MigrateTo(ctx, pool, latest); err != nil {
		t.Fatalf("MigrateTo(%d) at %d: %v", latest, latest, err)
	}
	if err := conduit.MigrateTo(ctx, pool, -1); err != nil {
		t.Fatalf("MigrateTo(-1) at the latest: %v", err)
	}
	if after := versionRows(t, ctx, pool); after != rows {
		t.Fatalf("a repeated Migrate changed the version table from %d to %d rows", rows, after)
	}
	if n := countEvents(t, ctx, pool, "kept"); n != 1 {
		t.Fatalf("a repeated Migrate left %d events, want 1", n)
	}

	// Down to 0: every Conduit object goes but the schema and version table.
	if err := conduit.MigrateTo(ctx, pool, 0); err != nil {
		t.Fatalf("MigrateTo(0): %v", err)
	}
	for _, obj := range []string{"conduit.events"} {
		if exists(t, ctx, pool, "class", obj) {
			t.Fatalf("%s still exists after MigrateTo(0)", obj)
		}
	}
	for _, fn := range []string{"conduit.append_to_stream(text,bigint,uuid[],text[],text[],text[])", "conduit.refuse_event_change()"} {
		if exists(t, ctx, pool, "procedure", fn) {
			t.Fatalf("%s still exists after MigrateTo(0)", fn)
		}
	}
	if !exists(t, ctx, pool, "class", conduit.MigrationTable) {
		t.Fatal("MigrateTo(0) dropped the version table")
	}
	// Like Migrate at the latest version, MigrateTo(0) at 0 is a no-op.
	if err := conduit.MigrateTo(ctx, pool, 0); err != nil {
		t.Errorf("MigrateTo(0) at 0: %v", err)
	}

	// And up again.
	if err := conduit.Migrate(ctx, pool); err != nil {
		t.Fatalf("Migrate after MigrateTo(0): %v", err)
	}
	if _, err := store.Append(ctx, "new", conduit.NoStream, mustEvent(t, "e", 1)); err != nil {
		t.Fatalf("append after re-migrating: %v", err)
	}
	if n := countEvents(t, ctx, pool, ""); n != 1 {
		t.Fatalf("%d events after re-migrating, want 1", n)
	}
}

// Deploys migrating at once, on a fresh empty database: all succeed.
func TestMigrateConcurrent(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	for round := range 3 {
		url := emptyDB(t)
		const deploys = 3
		pools := make([]*pgxpool.Pool, deploys)
		for i := range pools {
			pools[i] = pgtest.Connect(t, url)
			if err := pools[i].Ping(ctx); err != nil { // connect before the start line
				t.Fatal(err)
			}
		}
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			errs  = make([]error, deploys)
		)
		for i := range deploys {
			wg.Go(func() {
				<-start
				errs[i] = conduit.Migrate(ctx, pools[i])
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d: deploy %d: Migrate: %v", round, i, err)
			}
		}
		if t.Failed() {
			return
		}
		if !exists(t, ctx, pools[0], "class", "conduit.events") {
			t.Fatalf("round %d: conduit.events missing", round)
		}
		var applied int
		if err := pools[0].QueryRow(ctx, "SELECT count(*) FROM "+conduit.MigrationTable+" WHERE version_id = 1").Scan(&applied); err != nil || applied != 1 {
			t.Fatalf("round %d: migration 1 recorded %d times, %v", round, applied, err)
		}
	}
}

// Migrate and MigrateTo(latest) on a current schema need no more than
// reading the version table: a role with only CONNECT, USAGE on the conduit
// schema and SELECT on conduit.goose_db_version may run them at start-up.
func TestMigrateCurrentNeedsOnlyRead(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	name := pgtest.NewDB(t, conduit.Migrations(), conduit.Migrate)
	admin := pgtest.Connect(t, pgtest.URLFor(t, name))

	// Roles are cluster-wide: a unique name, dropped when the test ends.
	var role, password string
	if err := admin.QueryRow(ctx, `SELECT 'conduit_test_reader_' || md5(random()::text), md5(random()::text)`).Scan(&role, &password); err != nil {
		t.Fatal(err)
	}
	r, db := pgx.Identifier{role}.Sanitize(), pgx.Identifier{name}.Sanitize()
	if _, err := admin.Exec(ctx, `CREATE ROLE `+r+` LOGIN PASSWORD '`+password+`'`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, sql := range []string{`DROP OWNED BY ` + r, `DROP ROLE ` + r} {
			if _, err := admin.Exec(context.Background(), sql); err != nil {
				t.Errorf("%s: %v", sql, err)
			}
		}
	})
	for _, sql := range []string{
		`REVOKE ALL ON DATABASE ` + db + ` FROM PUBLIC`,
		`GRANT CONNECT ON DATABASE ` + db + ` TO ` + r,
		`GRANT USAGE ON SCHEMA conduit TO ` + r,
		`GRANT SELECT ON ` + conduit.MigrationTable + ` TO ` + r,
	} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	cfg, err := pgxpool.ParseConfig(pgtest.URLFor(t, name))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.User, cfg.ConnConfig.Password = role, password
	reader, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reader.Close)

	if err := conduit.Migrate(ctx, reader); err != nil {
		t.Errorf("Migrate on a current schema as a role that may only read the version table: %v", err)
	}
	latest := latestMigration(t)
	if err := conduit.MigrateTo(ctx, reader, latest); err != nil {
		t.Errorf("MigrateTo(latest) on a current schema as that role: %v", err)
	}
	// Work to do needs the privileges, and is refused without them.
	if err := conduit.MigrateTo(ctx, reader, latest-1); err == nil {
		t.Errorf("MigrateTo(%d) as a role that may only read the version table succeeded", latest-1)
	}
	var current int64
	if err := admin.QueryRow(ctx, "SELECT max(version_id) FROM "+conduit.MigrationTable).Scan(&current); err != nil || current != latest {
		t.Errorf("version %d, %v after the refused MigrateTo; want %d", current, err, latest)
	}
}

// A role granted before migration 16 (conduit.grant_application at version
// 15) may name an outbox message's generation after it, as a role granted
// after it may; migrating back down takes that privilege back.
func TestMigrateGrantsGenerationToRolesGrantedBefore(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pool := pgtest.Connect(t, emptyDB(t))
	if err := conduit.MigrateTo(ctx, pool, 15); err != nil {
		t.Fatal(err)
	}
	var role string
	if err := pool.QueryRow(ctx, `SELECT 'conduit_test_app_' || md5(random()::text)`).Scan(&role); err != nil {
		t.Fatal(err)
	}
	r := pgx.Identifier{role}.Sanitize()
	if _, err := pool.Exec(ctx, `CREATE ROLE `+r); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, sql := range []string{`DROP OWNED BY ` + r, `DROP ROLE ` + r} {
			if _, err := pool.Exec(context.Background(), sql); err != nil {
				t.Errorf("%s: %v", sql, err)
			}
		}
	})
	if _, err := pool.Exec(ctx, `SELECT conduit.grant_application($1)`, role); err != nil {
		t.Fatal(err)
	}
	mayName := func() bool {
		t.Helper()
		var ok bool
		if err := pool.QueryRow(ctx, `SELECT has_column_privilege($1, 'conduit.outbox', 'generation', 'INSERT')`, role).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if mayName() {
		t.Fatal("at version 15 the role may already name the generation: the test shows nothing")
	}
	if err := conduit.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if !mayName() {
		t.Fatal("after migration 16 the role granted before it may not name the generation")
	}
	if err := conduit.MigrateTo(ctx, pool, 15); err != nil {
		t.Fatal(err)
	}
	if mayName() {
		t.Fatal("back at version 15 the role still may name the generation")
	}
}
