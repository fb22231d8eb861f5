package cli

import (
	"io/fs"
	"strconv"
	"strings"
	"testing"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// migrationFiles returns the number of migration files and the latest version.
func migrationFiles(t *testing.T) (count int, latest int64) {
	t.Helper()
	files, err := fs.Glob(conduit.Migrations(), "*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("migrations: %v %v", files, err)
	}
	last := files[len(files)-1]
	latest, err = strconv.ParseInt(last[:strings.IndexByte(last, '_')], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return len(files), latest
}

func TestMigrateLifecycle(t *testing.T) {
	t.Parallel()
	url := emptyDatabase(t)
	count, latest := migrationFiles(t)

	st := decode[migrationsJSON](t, mustRun(t, ExitOK, url, "", "migrate", "status", "--json"))
	if st.Current != 0 || st.Latest != latest || st.Pending != count || len(st.Migrations) != count {
		t.Fatalf("status of an empty database: %+v", st)
	}
	if st.Migrations[0].File != "00001_events.sql" || st.Migrations[0].Applied {
		t.Fatalf("first migration: %+v", st.Migrations[0])
	}

	// The deploy gate fails while migrations are pending, and says what to do.
	r := mustRun(t, ExitCheckFailed, url, "", "migrate", "validate")
	if !strings.Contains(r.stderr, "pending") || !strings.Contains(r.stderr, "hint: run `conduit migrate up`") {
		t.Fatalf("validate on an empty database:\n%s", r)
	}
	// Commands that need the schema point at the fix.
	r = mustRun(t, ExitError, url, "", "read", "order-1")
	if !strings.Contains(r.stderr, "conduit migrate up") {
		t.Fatalf("read without the schema: want the migrate hint:\n%s", r)
	}

	r = mustRun(t, ExitOK, url, "", "migrate", "up")
	if !strings.Contains(r.stdout, "applied 00001_events.sql") || !strings.Contains(r.stdout, "at version "+strconv.FormatInt(latest, 10)) {
		t.Fatalf("migrate up:\n%s", r)
	}
	mustRun(t, ExitOK, url, "", "migrate", "validate")
	up := decode[migrationsJSON](t, mustRun(t, ExitOK, url, "", "migrate", "up", "--json"))
	if up.Current != latest || up.Pending != 0 || len(up.Changed) != 0 {
		t.Fatalf("migrate up again: %+v", up)
	}
	st = decode[migrationsJSON](t, mustRun(t, ExitOK, url, "", "migrate", "status", "--json"))
	for _, m := range st.Migrations {
		if !m.Applied || m.AppliedAt == nil {
			t.Fatalf("after up: %+v", m)
		}
	}

	// Down one version, then to 2; the gate fails again.
	down := decode[migrationsJSON](t, mustRun(t, ExitOK, url, "", "migrate", "down", "--json"))
	if down.Current != st.Migrations[count-2].Version || len(down.Changed) != 1 || down.Changed[0] != latest {
		t.Fatalf("migrate down: %+v", down)
	}
	mustRun(t, ExitCheckFailed, url, "", "migrate", "validate")
	r = mustRun(t, ExitOK, url, "", "migrate", "down", "--to", "2")
	if !strings.Contains(r.stdout, "rolled back 00003_append_rule.sql") {
		t.Fatalf("migrate down --to 2:\n%s", r)
	}
	// Down to 0 drops every event: refused without --yes.
	r = mustRun(t, ExitUsage, url, "", "migrate", "down", "--to", "0")
	if !strings.Contains(r.stderr, "--yes") {
		t.Fatalf("migrate down --to 0 without --yes:\n%s", r)
	}
	mustRun(t, ExitUsage, url, "", "migrate", "down", "--to", "7")
	mustRun(t, ExitOK, url, "", "migrate", "down", "--to", "0", "--yes")
	st = decode[migrationsJSON](t, mustRun(t, ExitOK, url, "", "migrate", "status", "--json"))
	if st.Current != 0 || st.Pending != count {
		t.Fatalf("after down to 0: %+v", st)
	}
	if r := mustRun(t, ExitUsage, url, "", "migrate", "down"); !strings.Contains(r.stderr, "nothing to roll back") {
		t.Fatalf("migrate down at 0:\n%s", r)
	}
	// Up to a version, then the rest: the library's Migrate agrees.
	mustRun(t, ExitOK, url, "", "migrate", "up", "--to", "3")
	if st := decode[migrationsJSON](t, mustRun(t, ExitOK, url, "", "migrate", "status", "--json")); st.Current != 3 {
		t.Fatalf("after up --to 3: %+v", st)
	}
	if err := conduit.Migrate(testContext(t), pgtest.Connect(t, url)); err != nil {
		t.Fatal(err)
	}
	mustRun(t, ExitOK, url, "", "migrate", "validate")
}

// migrate sql prints what another tool applies; with --record the
// database then reads as migrated to conduit.Migrate and migrate validate.
func TestMigrateSQLAppliedByAnotherTool(t *testing.T) {
	t.Parallel()
	count, latest := migrationFiles(t)
	r := mustRun(t, ExitOK, "", "", "migrate", "sql")
	if n := strings.Count(r.stdout, "\nBEGIN;\n"); n != count {
		t.Fatalf("migrate sql: %d transactions, want %d", n, count)
	}
	if !strings.Contains(r.stdout, "CREATE TABLE conduit.events") || strings.Contains(r.stdout, "+goose") ||
		strings.Contains(r.stdout, "DROP TABLE conduit.events") || strings.Contains(r.stdout, "goose_db_version") {
		t.Fatalf("migrate sql: want the Up sections alone:\n%s", r.stdout)
	}
	down := mustRun(t, ExitOK, "", "", "migrate", "sql", "--down", "--version", "1")
	if !strings.Contains(down.stdout, "DROP TABLE conduit.events") || strings.Contains(down.stdout, "CREATE TABLE") {
		t.Fatalf("migrate sql --down --version 1:\n%s", down.stdout)
	}
	r = mustRun(t, ExitNotFound, "", "", "migrate", "sql", "--version", "99")
	if !strings.Contains(r.stderr, "no migration with version 99") {
		t.Fatalf("migrate sql --version 99:\n%s", r)
	}

	url := emptyDatabase(t)
	record := mustRun(t, ExitOK, "", "", "migrate", "sql", "--record")
	pool := pgtest.Connect(t, url)
	ctx := testContext(t)
	if _, err := pool.Exec(ctx, record.stdout); err != nil { // the simple protocol: the whole script
		t.Fatalf("apply migrate sql --record: %v", err)
	}
	mustRun(t, ExitOK, url, "", "migrate", "validate")
	if err := conduit.Migrate(ctx, pool); err != nil { // finds nothing to do
		t.Fatal(err)
	}
	st := decode[migrationsJSON](t, mustRun(t, ExitOK, url, "", "migrate", "status", "--json"))
	if st.Current != latest || st.Pending != 0 {
		t.Fatalf("after applying the recorded SQL: %+v", st)
	}
	mustRun(t, ExitOK, url, "", "append", "order-1", "placed", `{"n":1}`)

	// The down script, recorded, takes the database back to 0 as MigrateTo would.
	downAll := mustRun(t, ExitOK, "", "", "migrate", "sql", "--down", "--record")
	if _, err := pool.Exec(ctx, downAll.stdout); err != nil {
		t.Fatalf("apply migrate sql --down --record: %v", err)
	}
	if st := decode[migrationsJSON](t, mustRun(t, ExitOK, url, "", "migrate", "status", "--json")); st.Current != 0 {
		t.Fatalf("after the recorded down script: %+v", st)
	}
}
