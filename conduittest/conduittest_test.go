package conduittest_test

// These tests use the kit as your tests would: the Example functions of a
// test kit cannot get a *testing.T.

import (
	"context"
	"encoding/json"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/conduittest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestAppendAndReadStream(t *testing.T) {
	t.Parallel()
	store := conduittest.NewStore(t, nil)

	placed := newEvent(t, "order_placed", map[string]string{"customer": "ada"})
	paid := newEvent(t, "order_paid", map[string]int{"amount_cents": 4900})
	res, err := store.Append(t.Context(), "order-1", conduit.NoStream, placed, paid)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != 2 {
		t.Errorf("version %d after two events, want 2", res.Version)
	}
	if got, want := types(readStream(t, store, "order-1")), []string{"order_placed", "order_paid"}; !slices.Equal(got, want) {
		t.Errorf("stream holds %v, want %v", got, want)
	}
}

// Two tests each append to the same stream as its first writer: in one
// database, one of them would get a version conflict, whatever order
// they run in.
func TestDatabasesAreIsolated(t *testing.T) {
	t.Parallel()
	for _, customer := range []string{"ada", "grace"} {
		t.Run(customer, func(t *testing.T) {
			t.Parallel()
			store := conduittest.NewStore(t, nil)
			placed := newEvent(t, "order_placed", map[string]string{"customer": customer})
			if _, err := store.Append(t.Context(), "order-1", conduit.NoStream, placed); err != nil {
				t.Fatalf("append as the stream's first writer: %v", err)
			}
			events := readStream(t, store, "order-1")
			if len(events) != 1 {
				t.Fatalf("stream holds %d events, want only this test's one", len(events))
			}
			var data struct{ Customer string }
			if err := json.Unmarshal(events[0].Data, &data); err != nil || data.Customer != customer {
				t.Errorf("stream holds an order of %q (%v), want %s's", data.Customer, err, customer)
			}
		})
	}
}

// A database for a pool of your own making.
func TestNewDatabase(t *testing.T) {
	t.Parallel()
	cfg, err := pgxpool.ParseConfig(conduittest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close) // before the database is dropped
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	if _, err := store.Append(t.Context(), "order-1", conduit.NoStream, newEvent(t, "order_placed", map[string]string{"customer": "ada"})); err != nil {
		t.Fatal(err)
	}
	if n := len(readStream(t, store, "order-1")); n != 1 {
		t.Errorf("stream holds %d events, want 1", n)
	}
}

// shopSchema is the read side of a shop, created once on the template.
// Being the Key too, a change to it makes a new template.
const shopSchema = `
CREATE SCHEMA shop;
CREATE TABLE shop.orders (id text PRIMARY KEY, customer text NOT NULL);`

var shopSetups atomic.Int32

var shop = conduittest.Template{
	Key: shopSchema,
	Setup: func(ctx context.Context, pool *pgxpool.Pool) error {
		shopSetups.Add(1)
		_, err := pool.Exec(ctx, shopSchema)
		return err
	},
}

// orders projects placed orders into shop.orders, in the append's
// transaction.
func orders() conduit.Projection {
	r := conduit.NewRouter("orders", "shop.orders")
	return conduit.On(r, "order_placed", func(ctx context.Context, tx pgx.Tx, e conduit.Event, data struct{ Customer string }) error {
		_, err := tx.Exec(ctx, "INSERT INTO shop.orders (id, customer) VALUES ($1, $2)", e.StreamID, data.Customer)
		return err
	})
}

// The Setup's tables exist in every test's database, each test sees only
// its own rows in them, and Setup ran once, on the template, if at all
// (the template may be left from an earlier run).
func TestTemplateSetup(t *testing.T) {
	t.Parallel()
	t.Cleanup(func() { // after the subtests
		if n := shopSetups.Load(); n > 1 {
			t.Errorf("Setup ran %d times, want at most once", n)
		}
	})
	for _, customer := range []string{"ada", "grace"} {
		t.Run(customer, func(t *testing.T) {
			t.Parallel()
			store := shop.NewStore(t, &conduit.Config{Projections: []conduit.Projection{orders()}})
			placed := newEvent(t, "order_placed", map[string]string{"customer": customer})
			if _, err := store.Append(t.Context(), "order-1", conduit.NoStream, placed); err != nil {
				t.Fatal(err)
			}
			rows, err := store.Pool().Query(t.Context(), "SELECT customer FROM shop.orders")
			if err != nil {
				t.Fatal(err)
			}
			customers, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(customers, []string{customer}) {
				t.Errorf("shop.orders holds orders of %v, want only %s's", customers, customer)
			}
		})
	}
}

func newEvent(t *testing.T, eventType string, v any) conduit.EventData {
	t.Helper()
	e, err := conduit.NewEvent(eventType, v)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func readStream(t *testing.T, store *conduit.Store, streamID string) []conduit.Event {
	t.Helper()
	var events []conduit.Event
	for e, err := range store.ReadStream(t.Context(), streamID, 1) {
		if err != nil {
			t.Fatalf("read %s: %v", streamID, err)
		}
		events = append(events, e)
	}
	return events
}

func types(events []conduit.Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.Type
	}
	return out
}
