// Package pgtest gives tests a real PostgreSQL: a fresh database per test,
// cloned from a migrated template, so tests that commit, LISTEN or compete
// for leases stay apart and run in parallel.
//
// Where the server comes from, in order: DATABASE_URL (any database on the
// server; pgtest creates its own); else, where a Docker engine answers, a
// PostgreSQL container started with testcontainers-go; else the test is
// skipped, except when CI=true, where it fails: CI must never count a test
// that did not run.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// MigrateFunc migrates a fresh database.
type MigrateFunc func(ctx context.Context, pool *pgxpool.Pool) error

var (
	serverOnce sync.Once
	serverURL  string
	serverErr  error
)

// ServerURL returns a URL of the test server's admin database, or skips
// (fails in CI) when there is none.
func ServerURL(t testing.TB) string {
	t.Helper()
	serverOnce.Do(func() {
		if u := os.Getenv("DATABASE_URL"); u != "" {
			serverURL = u
			return
		}
		serverURL, serverErr = startContainer()
	})
	if serverErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("pgtest: no PostgreSQL: DATABASE_URL is unset and no container could start: %v", serverErr)
		}
		t.Skipf("pgtest: no PostgreSQL (set DATABASE_URL): %v", serverErr)
	}
	return serverURL
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

// URLFor returns the server URL with its database replaced by name.
func URLFor(t testing.TB, name string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(ServerURL(t))
	if err != nil {
		t.Fatalf("pgtest: parse DATABASE_URL: %v", err)
	}
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable",
		cfg.User, cfg.Password, cfg.Host, cfg.Port, name)
}

// NewDB creates a fresh database cloned from a template migrated with
// migrate, and returns its name. The database is dropped when the test ends.
// migrations identifies the schema: a change to the files makes a new
// template.
func NewDB(t testing.TB, migrations fs.FS, migrate MigrateFunc) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin := adminConn(t, ctx)
	defer admin.Close(context.Background())

	template := ensureTemplate(t, ctx, admin, migrations, migrate)
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

func redact(url string) string {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return "(unparsable DATABASE_URL)"
	}
	return fmt.Sprintf("%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

var templates sync.Map // fingerprint -> template name, per process

// ensureTemplate makes (once per schema, across processes) a migrated
// template database and returns its name. The template is built under
// another name and renamed when complete, so a crash never leaves a
// half-migrated template behind.
func ensureTemplate(t testing.TB, ctx context.Context, admin *pgx.Conn, migrations fs.FS, migrate MigrateFunc) string {
	t.Helper()
	fp := fingerprint(t, migrations)
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
		err = migrate(ctx, pool)
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

func fingerprint(t testing.TB, fsys fs.FS) string {
	t.Helper()
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
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func randomSuffix() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
