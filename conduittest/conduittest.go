package conduittest

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// Template is the schema every test database starts from: Conduit's
// migrations, then Setup. The zero Template is Conduit's migrations alone,
// what the package-level functions use.
type Template struct {
	// Key identifies what Setup does. Templates are named by a fingerprint
	// of Conduit's migrations and Key, so change Key whenever Setup
	// changes, or the next run reuses the template built by the old Setup.
	// The SQL text Setup runs, or a version you bump, serves. Required with
	// Setup.
	Key string

	// Setup runs once per template, on a database Conduit's migrations
	// were applied to: create your read tables and reference rows there.
	// Every test database is a copy. Defaults to nothing.
	Setup func(ctx context.Context, pool *pgxpool.Pool) error
}

// NewDatabase creates a fresh database from the template and returns a
// connection string for it (a URL, unless DATABASE_URL is in keyword/value
// form), for building your own pool. The database is dropped, its
// connections cut, when the test ends: close your pool in a t.Cleanup
// registered after this call.
func (tmpl Template) NewDatabase(t testing.TB) string {
	t.Helper()
	if tmpl.Setup != nil && tmpl.Key == "" {
		t.Fatal("conduittest: Template.Setup needs a Key naming what it does")
	}
	name := pgtest.NewDBFrom(t, pgtest.Template{
		Migrations: conduit.Migrations(),
		Key:        tmpl.Key,
		Migrate: func(ctx context.Context, pool *pgxpool.Pool) error {
			if err := conduit.Migrate(ctx, pool); err != nil {
				return err
			}
			if tmpl.Setup == nil {
				return nil
			}
			if err := tmpl.Setup(ctx, pool); err != nil {
				return fmt.Errorf("conduittest: Template.Setup: %w", err)
			}
			return nil
		},
	})
	return pgtest.URLFor(t, name)
}

// NewPool creates a fresh database from the template and returns a pool on
// it. The pool is closed and the database dropped when the test ends.
func (tmpl Template) NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return pgtest.Connect(t, tmpl.NewDatabase(t))
}

// NewStore creates a fresh database from the template and returns a Store
// on it, configured by cfg (nil for defaults); Store.Pool is its pool.
// When the test ends the store is closed, then the pool, then the
// database dropped: stop projectors before, e.g. by running them with
// t.Context().
func (tmpl Template) NewStore(t testing.TB, cfg *conduit.Config) *conduit.Store {
	t.Helper()
	store, err := conduit.NewStore(tmpl.NewPool(t), cfg)
	if err != nil {
		t.Fatalf("conduittest: %v", err)
	}
	t.Cleanup(store.Close)
	return store
}

// NewDatabase creates a fresh database with Conduit's schema and returns a
// connection string for it; see [Template.NewDatabase].
func NewDatabase(t testing.TB) string {
	t.Helper()
	return Template{}.NewDatabase(t)
}

// NewPool returns a pool on a fresh database with Conduit's schema; see
// [Template.NewPool].
func NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return Template{}.NewPool(t)
}

// NewStore returns a Store on a fresh database with Conduit's schema; see
// [Template.NewStore].
func NewStore(t testing.TB, cfg *conduit.Config) *conduit.Store {
	t.Helper()
	return Template{}.NewStore(t, cfg)
}
