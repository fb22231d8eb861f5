// Package pgtest gives tests a real PostgreSQL: a fresh database per test,
// cloned from a migrated template, so tests that commit, LISTEN or compete
// for leases stay apart and run in parallel.
//
// Where the server comes from, in order:
//
//  1. DATABASE_URL, a URL or keyword/value connection string naming any
//     database on the server; pgtest creates its own databases there.
//  2. A local server at the libpq defaults: the PGHOST, PGPORT, PGUSER, ...
//     environment variables, else the default unix socket directory and
//     the OS user name; then, only when none of PGHOST, PGPORT, PGUSER and
//     PGSERVICE is set, 127.0.0.1:5432 as user postgres (the server
//     `make test` uses). A server counts only if it answers within two
//     seconds and its role may create databases.
//  3. Where a Docker engine answers, a PostgreSQL container started with
//     testcontainers-go.
//
// Without any, the test is skipped, except when CI=true, where it fails: CI
// must never count a test that did not run. The first test to get a server
// logs which one it is (go test -v shows it).
//
// Tests of Conduit behind a pooler also take PGBOUNCER_URL, a PgBouncer in
// transaction mode in front of the same server that reaches each of its
// databases by name (see PgBouncerURL); .ci/pgbouncer starts one.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// MigrateFunc migrates a fresh database.
type MigrateFunc func(ctx context.Context, pool *pgxpool.Pool) error

// probeTimeout bounds each attempt at a local server, so that a machine
// without one falls through to the next choice quickly.
const probeTimeout = 2 * time.Second

var (
	serverOnce sync.Once
	serverURL  string // connection string of the server's admin database
	serverFrom string // where it came from, for the log
	serverErr  error
	logged     atomic.Bool
)

// Server finds the test server once per process, in the package doc's
// order, and returns a connection string for its admin database and where
// it came from; or why there is none. For code without a testing.TB (the
// runnable examples); tests call ServerURL.
func Server() (connString, from string, err error) {
	serverOnce.Do(func() { serverURL, serverFrom, serverErr = findServer() })
	return serverURL, serverFrom, serverErr
}

// ServerURL returns a connection string for the test server's admin
// database, or skips (fails in CI) when there is none.
func ServerURL(t testing.TB) string {
	t.Helper()
	if _, _, err := Server(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pgtest: no PostgreSQL: %v", serverErr)
		}
		t.Skipf("pgtest: no PostgreSQL (set DATABASE_URL): %v", serverErr)
	}
	if logged.CompareAndSwap(false, true) {
		t.Logf("pgtest: using PostgreSQL %s", serverFrom)
	}
	return serverURL
}

// findServer returns a connection string for the first server of the
// package doc's list, and says where it came from; or why there is none.
func findServer() (connString, from string, err error) {
	if u := os.Getenv("DATABASE_URL"); u != "" {
		return u, redact(u) + " from DATABASE_URL", nil
	}
	var failures []string
	// postgres:///postgres is the libpq defaults with the maintenance
	// database, which exists everywhere (createdb connects to it too); the
	// default database, named after the user, often does not.
	local := []string{"postgres:///postgres"}
	if !libpqEnvSet() {
		local = append(local, "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable")
	}
	for _, u := range local {
		if err := probe(u); err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", redact(u), err))
			continue
		}
		return u, redact(u) + " (local server)" + passedOver(failures), nil
	}
	u, err := startContainer()
	if err != nil {
		failures = append(failures, fmt.Sprintf("testcontainers: %v", err))
		return "", "", fmt.Errorf("DATABASE_URL is unset; %s", strings.Join(failures, "; "))
	}
	return u, redact(u) + " in a testcontainers container" + passedOver(failures), nil
}

// passedOver says why the servers tried first were not used.
func passedOver(failures []string) string {
	if len(failures) == 0 {
		return ""
	}
	return "; passed over " + strings.Join(failures, "; ")
}

// libpqEnvSet reports whether the environment names a server or user for
// libpq. Then the fallback to 127.0.0.1 as postgres would go around the
// user's choice, so it is not tried.
func libpqEnvSet() bool {
	for _, v := range []string{"PGHOST", "PGPORT", "PGUSER", "PGSERVICE"} {
		if os.Getenv(v) != "" {
			return true
		}
	}
	return false
}

// probe checks that the server of connString answers and that its role may
// create databases.
func probe(connString string) error {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var canCreate bool
	err = conn.QueryRow(ctx, "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&canCreate)
	if err != nil {
		return fmt.Errorf("read the role's rights: %w", err)
	}
	if !canCreate {
		return fmt.Errorf("role %q may not create databases", conn.Config().User)
	}
	return nil
}

func startContainer() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ctr, err := testcontainers.Run(ctx, "postgres:15",
		testcontainers.WithEnv(map[string]string{"POSTGRES_PASSWORD": "postgres", "POSTGRES_HOST_AUTH_METHOD": "trust"}),
		testcontainers.WithExposedPorts("5432/tcp"),
		testcontainers.WithWaitStrategy(wait.ForLog("database system is ready to accept connections").WithOccurrence(2)),
	)
	if err != nil {
		return "", err
	}
	// The container lives as long as the test binary; testcontainers' reaper
	// removes it afterwards.
	endpoint, err := ctr.PortEndpoint(ctx, "5432/tcp", "")
	if err != nil {
		return "", err
	}
	return "postgres://postgres:postgres@" + endpoint + "/postgres?sslmode=disable", nil
}

// URLFor returns the server's connection string with its database replaced
// by name. Everything else stays as written, so socket hosts, TLS settings
// and other parameters carry over.
func URLFor(t testing.TB, name string) string {
	t.Helper()
	u := withDatabase(ServerURL(t), name)
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		t.Fatalf("pgtest: parse the server's connection string: %v", err)
	}
	if cfg.Database != name {
		// A dbname query parameter overrides the URL's path.
		t.Fatalf("pgtest: cannot point %s at database %s: name the database in the URL's path", redact(ServerURL(t)), name)
	}
	return u
}

// PgBouncerURL returns a connection string for database name (made with
// NewDB, on the server of ServerURL) through the PgBouncer of PGBOUNCER_URL,
// which must pool in transaction mode in front of that server and reach
// every database by name. Without PGBOUNCER_URL the test is skipped, except
// when CI=true, where it fails.
func PgBouncerURL(t testing.TB, name string) string {
	t.Helper()
	u := os.Getenv("PGBOUNCER_URL")
	if u == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("pgtest: PGBOUNCER_URL is unset (.ci/pgbouncer starts PgBouncer and prints it)")
		}
		t.Skip(`pgtest: PGBOUNCER_URL is unset: no PgBouncer to test through (eval "$(bash .ci/pgbouncer)" starts one and sets it)`)
	}
	return withDatabase(u, name)
}

// withDatabase returns connString, a URL or keyword/value string, with its
// database replaced by name.
func withDatabase(connString, name string) string {
	rest, ok := strings.CutPrefix(connString, "postgres://")
	if !ok {
		rest, ok = strings.CutPrefix(connString, "postgresql://")
	}
	if !ok {
		// Keyword/value: a later key overrides an earlier one.
		quoted := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(name)
		return strings.TrimSpace(connString + " dbname='" + quoted + "'")
	}
	scheme := connString[:len(connString)-len(rest)]
	// As in libpq, the user info ends at an '@' before the first '/'.
	var userinfo string
	if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
		userinfo, rest = rest[:i+1], rest[i+1:]
	}
	// Then come the hosts, up to the path (the database) or the query.
	hosts, query := rest, ""
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		hosts, rest = rest[:i], rest[i:]
		if j := strings.IndexByte(rest, '?'); j >= 0 {
			query = rest[j:]
		}
	}
	return scheme + userinfo + hosts + "/" + url.PathEscape(name) + query
}

// Template describes a template database: a fresh database that Migrate
// ran on. Templates are kept on the server, named conduit_tmpl_ and a
// fingerprint of Migrations and Key, and are reused by every test and test
// process that asks for the same fingerprint.
type Template struct {
	// Migrations are the files Migrate applies. A change to them makes a
	// new template.
	Migrations fs.FS
	// Key identifies whatever else Migrate does (a schema on top of the
	// migrations, say); a different Key makes a different template. Empty
	// when the files say it all.
	Key string
	// Migrate builds the template's schema, once per fingerprint.
	Migrate MigrateFunc
}

// NewDB creates a fresh database cloned from a template migrated with
// migrate, and returns its name. The database is dropped when the test ends.
// migrations identifies the schema: a change to the files makes a new
// template.
func NewDB(t testing.TB, migrations fs.FS, migrate MigrateFunc) string {
	t.Helper()
	return NewDBFrom(t, Template{Migrations: migrations, Migrate: migrate})
}

// NewDBFrom creates a fresh database cloned from tmpl, building tmpl first
// if the server lacks it, and returns its name. The database is dropped
// when the test ends.
func NewDBFrom(t testing.TB, tmpl Template) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := adminConn(t, ctx)
	defer admin.Close(context.Background())

	template := ensureTemplate(t, ctx, admin, tmpl)
	name := "conduit_test_" + randomSuffix()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+pgx.Identifier{template}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database from template: %v", err)
	}
	t.Cleanup(func() { DropDB(t, name) })
	return name
}

// NewPool is NewDB returning a pool on the new database, closed at cleanup
// before the database is dropped.
func NewPool(t testing.TB, migrations fs.FS, migrate MigrateFunc) *pgxpool.Pool {
	t.Helper()
	name := NewDB(t, migrations, migrate)
	return Connect(t, URLFor(t, name))
}

// Connect opens a pool on url, closed at cleanup.
func Connect(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// DropDB drops a database, disconnecting whoever is still on it.
func DropDB(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := adminConn(t, ctx)
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Errorf("pgtest: drop database %s: %v", name, err)
	}
}

func adminConn(t testing.TB, ctx context.Context) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, ServerURL(t))
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pgtest: connect to %s: %v", redact(ServerURL(t)), err)
		}
		t.Skipf("pgtest: cannot connect to PostgreSQL: %v", err)
	}
	return conn
}

// redact names the server, user and database of connString, without
// the password.
func redact(connString string) string {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return "(unparsable connection string)"
	}
	return fmt.Sprintf("%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

var templates sync.Map // fingerprint -> template name, per process

// ensureTemplate makes (once per schema, across processes) a migrated
// template database and returns its name. The template is built under
// another name and renamed when complete, so a crash never leaves a
// half-migrated template behind.
func ensureTemplate(t testing.TB, ctx context.Context, admin *pgx.Conn, tmpl Template) string {
	t.Helper()
	fp := fingerprint(t, tmpl)
	if name, ok := templates.Load(fp); ok {
		return name.(string)
	}
	name := "conduit_tmpl_" + fp
	// Serialize template builds across test processes.
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock(hashtext($1))", name); err != nil {
		t.Fatalf("pgtest: lock template: %v", err)
	}
	defer admin.Exec(context.Background(), "SELECT pg_advisory_unlock(hashtext($1))", name) //nolint:errcheck

	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		t.Fatalf("pgtest: look up template: %v", err)
	}
	if !exists {
		build := name + "_build"
		for _, sql := range []string{
			"DROP DATABASE IF EXISTS " + pgx.Identifier{build}.Sanitize() + " WITH (FORCE)",
			"CREATE DATABASE " + pgx.Identifier{build}.Sanitize(),
		} {
			if _, err := admin.Exec(ctx, sql); err != nil {
				t.Fatalf("pgtest: build template: %v", err)
			}
		}
		pool, err := pgxpool.New(ctx, URLFor(t, build))
		if err != nil {
			t.Fatalf("pgtest: connect to template: %v", err)
		}
		err = tmpl.Migrate(ctx, pool)
		pool.Close()
		if err != nil {
			t.Fatalf("pgtest: migrate template: %v", err)
		}
		if _, err := admin.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{build}.Sanitize()+" RENAME TO "+pgx.Identifier{name}.Sanitize()); err != nil {
			t.Fatalf("pgtest: finish template: %v", err)
		}
	}
	templates.Store(fp, name)
	return name
}

// fingerprint hashes the template's migration files and Key. Without a Key
// it is the hash of the files alone.
func fingerprint(t testing.TB, tmpl Template) string {
	t.Helper()
	fsys := tmpl.Migrations
	h := sha256.New()
	var paths []string
	err := fs.WalkDir(fsys, ".", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			paths = append(paths, path)
		}
		return err
	})
	if err != nil {
		t.Fatalf("pgtest: read migrations: %v", err)
	}
	sort.Strings(paths)
	for _, p := range paths {
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			t.Fatalf("pgtest: read migrations: %v", err)
		}
		fmt.Fprintf(h, "%s\x00%d\x00", p, len(b))
		h.Write(b)
	}
	if tmpl.Key != "" {
		fmt.Fprintf(h, "\x00key\x00%d\x00", len(tmpl.Key))
		h.Write([]byte(tmpl.Key))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func randomSuffix() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
