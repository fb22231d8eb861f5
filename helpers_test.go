package conduit_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// newPool returns a pool on a fresh, migrated database.
func newPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return pgtest.NewPool(t, conduit.Migrations(), conduit.Migrate)
}

// newStore returns a store on a fresh, migrated database.
func newStore(t testing.TB, cfg *conduit.Config) (*conduit.Store, *pgxpool.Pool) {
	t.Helper()
	pool := newPool(t)
	store, err := conduit.NewStore(pool, cfg)
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	return store, pool
}

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mustEvent(t testing.TB, typ string, v any) conduit.EventData {
	t.Helper()
	e, err := conduit.NewEvent(typ, v)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// collect drains a sequence, failing the test on error.
func collect(t testing.TB, seq func(func(conduit.Event, error) bool)) []conduit.Event {
	t.Helper()
	var out []conduit.Event
	for e, err := range seq {
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		out = append(out, e)
	}
	return out
}
