package conduit_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

type personRegistered struct {
	Name string `json:"name"`
}

type personRenamed struct {
	Name string `json:"name"`
}

var errRefused = errors.New("projection refuses this name")

// peopleProjection keeps public.people, refusing the name "refuse".
// calls counts the events it was given.
func peopleProjection(calls *atomic.Int64) *conduit.Router {
	r := conduit.NewRouter("people", "public.people")
	conduit.On(r, "person_registered", func(ctx context.Context, tx pgx.Tx, e conduit.Event, p personRegistered) error {
		calls.Add(1)
		if p.Name == "refuse" {
			return errRefused
		}
		// The row is written in the append's transaction: the one that
		// wrote the event.
		var xid int64
		if err := tx.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&xid); err != nil {
			return err
		}
		if uint64(xid) != e.Position.TransactionID {
			return fmt.Errorf("projection runs in transaction %d, the event was written by %d", xid, e.Position.TransactionID)
		}
		_, err := tx.Exec(ctx, "INSERT INTO people (id, name, version) VALUES ($1, $2, $3)", e.StreamID, p.Name, e.StreamVersion)
		return err
	})
	conduit.On(r, "person_renamed", func(ctx context.Context, tx pgx.Tx, e conduit.Event, p personRenamed) error {
		calls.Add(1)
		_, err := tx.Exec(ctx, "UPDATE people SET name = $2, version = $3 WHERE id = $1", e.StreamID, p.Name, e.StreamVersion)
		return err
	})
	return r
}

func newPeopleStore(t *testing.T, ctx context.Context, projections ...conduit.Projection) (*conduit.Store, *pgxpool.Pool) {
	t.Helper()
	store, pool := newStore(t, &conduit.Config{Projections: projections})
	if _, err := pool.Exec(ctx, `CREATE TABLE people (id text PRIMARY KEY, name text NOT NULL, version bigint NOT NULL);
		CREATE TABLE projection_log (seq serial PRIMARY KEY, projection text, stream_id text, version bigint)`); err != nil {
		t.Fatal(err)
	}
	return store, pool
}

func people(t *testing.T, ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) []string {
	t.Helper()
	rows, err := q.Query(ctx, "SELECT id || '=' || name || '@' || version FROM people ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func register(t *testing.T, name string) conduit.EventData {
	return mustEvent(t, "person_registered", personRegistered{Name: name})
}

func TestProjectionAppliedWithAppend(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var calls atomic.Int64
	store, pool := newPeopleStore(t, ctx, peopleProjection(&calls))

	if _, err := store.Append(ctx, "p1", conduit.NoStream, register(t, "Ada"),
		mustEvent(t, "person_renamed", personRenamed{Name: "Ada L."})); err != nil {
		t.Fatal(err)
	}
	if got := people(t, ctx, pool); !slices.Equal(got, []string{"p1=Ada L.@2"}) {
		t.Fatalf("people = %v", got)
	}

	// AppendTx: the rows are visible in the caller's transaction and roll
	// back with it.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.AppendTx(ctx, tx, "p2", conduit.NoStream, register(t, "Grace")); err != nil {
		t.Fatal(err)
	}
	if got := people(t, ctx, tx); !slices.Equal(got, []string{"p1=Ada L.@2", "p2=Grace@1"}) {
		t.Fatalf("people in the transaction = %v", got)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := people(t, ctx, pool); !slices.Equal(got, []string{"p1=Ada L.@2"}) {
		t.Fatalf("people after rollback = %v", got)
	}
	if n := countEvents(t, ctx, pool, "p2"); n != 0 {
		t.Fatalf("%d events after rollback", n)
	}

	// And commit with it.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := store.AppendTx(ctx, tx, "p3", conduit.NoStream, register(t, "Edsger"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := people(t, ctx, pool); !slices.Equal(got, []string{"p1=Ada L.@2", "p3=Edsger@1"}) {
		t.Fatalf("people after commit = %v", got)
	}

	// Types without a handler are ignored.
	if _, err := store.Append(ctx, "p1", conduit.Any, mustEvent(t, "person_waved", map[string]int{"times": 2})); err != nil {
		t.Fatalf("unknown type: %v", err)
	}
	if got := people(t, ctx, pool); !slices.Equal(got, []string{"p1=Ada L.@2", "p3=Edsger@1"}) {
		t.Fatalf("people after an unhandled type = %v", got)
	}
	if calls.Load() != 4 {
		t.Fatalf("handlers called %d times, want 4", calls.Load())
	}
}

// A projection error rolls back the whole append, events and rows, and
// comes back naming the projection and wrapping the handler's error.
func TestProjectionErrorRollsBack(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var calls atomic.Int64
	store, pool := newPeopleStore(t, ctx, peopleProjection(&calls))

	check := func(name string, err error, wantType string, wantErr error) {
		t.Helper()
		var pe *conduit.ProjectionError
		if !errors.As(err, &pe) || !errors.Is(err, conduit.ErrProjection) {
			t.Fatalf("%s: err = %v, want a *ProjectionError", name, err)
		}
		if pe.Projection != "people" || pe.Event.Type != wantType || !strings.Contains(err.Error(), `"people"`) {
			t.Fatalf("%s: error %+v", name, pe)
		}
		if wantErr != nil && !errors.Is(err, wantErr) {
			t.Fatalf("%s: err = %v, want it to wrap %v", name, err, wantErr)
		}
		if n := countEvents(t, ctx, pool, ""); n != 0 {
			t.Fatalf("%s: %d events kept", name, n)
		}
		if got := people(t, ctx, pool); len(got) != 0 {
			t.Fatalf("%s: rows kept: %v", name, got)
		}
	}

	// The handler's own error, on the batch's second event: the first
	// event's row goes too.
	_, err := store.Append(ctx, "p1", conduit.NoStream, register(t, "Ada"), register(t, "refuse"))
	check("handler error", err, "person_registered", errRefused)
	var pe *conduit.ProjectionError
	if errors.As(err, &pe); pe.Event.StreamVersion != 2 {
		t.Fatalf("error names version %d, want 2", pe.Event.StreamVersion)
	}

	// A failing statement (duplicate key in the read table).
	if _, err := store.Append(ctx, "p1", conduit.NoStream, register(t, "Ada")); err != nil {
		t.Fatalf("setup: %v", err)
	}
	_, err = store.Append(ctx, "p1", conduit.Any, register(t, "Ada again"))
	if !errors.As(err, &pe) || pe.Projection != "people" || pe.Event.StreamVersion != 2 {
		t.Fatalf("SQL error in a handler: err = %v", err)
	}
	if n := countEvents(t, ctx, pool, ""); n != 1 {
		t.Fatalf("SQL error in a handler: %d events, want 1", n)
	}

	// Data that does not decode into the handler's struct.
	store2, pool2 := newPeopleStore(t, ctx, peopleProjection(&calls))
	_, err = store2.Append(ctx, "p9", conduit.NoStream, conduit.EventData{Type: "person_registered", Data: json.RawMessage(`"just a string"`)})
	var ute *json.UnmarshalTypeError
	if !errors.As(err, &pe) || !errors.Is(err, conduit.ErrProjection) || !errors.As(err, &ute) {
		t.Fatalf("bad JSON for the struct: err = %v", err)
	}
	if n := countEvents(t, ctx, pool2, ""); n != 0 {
		t.Fatalf("%d events kept after a decoding error", n)
	}

	// In AppendTx, too.
	tx, err := pool2.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	_, err = store2.AppendTx(ctx, tx, "p1", conduit.NoStream, register(t, "Ada"), register(t, "refuse"))
	if !errors.As(err, &pe) || !errors.Is(err, errRefused) || pe.Projection != "people" {
		t.Fatalf("AppendTx: err = %v", err)
	}
}

// After a projection error in AppendTx, the append must not survive in the
// caller's transaction: committing it anyway must not store the events
// without their read-table rows. (AppendTx documents the transaction as
// aborted; a handler's Go error leaves it open with the events in it.)
func TestProjectionErrorInAppendTxLeavesNoEvents(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var calls atomic.Int64
	store, pool := newPeopleStore(t, ctx, peopleProjection(&calls))

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	_, err = store.AppendTx(ctx, tx, "p1", conduit.NoStream, register(t, "Ada"), register(t, "refuse"))
	if !errors.Is(err, conduit.ErrProjection) {
		t.Fatalf("err = %v", err)
	}
	_ = tx.Commit(ctx) // a careless caller; it may fail, which is fine
	if n, rows := countEvents(t, ctx, pool, ""), people(t, ctx, pool); n != 0 || len(rows) != 0 {
		t.Fatalf("after a projection error, committing the transaction stored %d events and rows %v", n, rows)
	}
}

// logProjection records, in projection_log, that it saw each event.
type logProjection struct {
	name  string
	calls *atomic.Int64
}

func (p logProjection) Name() string { return p.name }

func (p logProjection) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	p.calls.Add(1)
	_, err := tx.Exec(ctx, "INSERT INTO projection_log (projection, stream_id, version) VALUES ($1, $2, $3)", p.name, e.StreamID, e.StreamVersion)
	return err
}

// Projections run in registration order (not name order), per event; an
// idempotent retry runs none of them.
func TestProjectionOrderAndRetry(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var calls atomic.Int64
	store, pool := newPeopleStore(t, ctx, logProjection{"zeta", &calls}, logProjection{"alpha", &calls})

	events := []conduit.EventData{withID(mustEvent(t, "e", 1), uuid.New()), withID(mustEvent(t, "e", 2), uuid.New())}
	first, err := store.Append(ctx, "s", conduit.NoStream, events...)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, "SELECT projection || ':' || version FROM projection_log ORDER BY seq")
	if err != nil {
		t.Fatal(err)
	}
	log, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"zeta:1", "alpha:1", "zeta:2", "alpha:2"}; !slices.Equal(log, want) {
		t.Fatalf("projection log = %v, want %v", log, want)
	}

	retried, err := store.Append(ctx, "s", conduit.NoStream, events...)
	if err != nil || !retried.Duplicate || retried.Position != first.Position {
		t.Fatalf("retry = %+v, %v", retried, err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if res, err := store.AppendTx(ctx, tx, "s", conduit.NoStream, events...); err != nil || !res.Duplicate {
		t.Fatalf("AppendTx retry = %+v, %v", res, err)
	}
	var n int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM projection_log").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 4 || calls.Load() != 4 {
		t.Fatalf("after retries: %d log rows, %d calls; want 4 and 4", n, calls.Load())
	}
}

func TestRouter(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	r := peopleProjection(&calls)
	if r.Name() != "people" || !slices.Equal(r.ReadTables(), []string{"public.people"}) {
		t.Fatalf("router %q owns %v", r.Name(), r.ReadTables())
	}
	if types := r.EventTypes(); !slices.Equal(types, []string{"person_registered", "person_renamed"}) {
		t.Fatalf("event types = %v", types)
	}
	// Unknown types are ignored without touching the transaction (nil here).
	if err := r.Apply(context.Background(), nil, conduit.Event{Type: "unknown", Data: json.RawMessage(`{}`)}); err != nil {
		t.Fatalf("unknown type: %v", err)
	}
	// A decoding error is the handler's error, before the handler runs.
	err := r.Apply(context.Background(), nil, conduit.Event{Type: "person_renamed", Data: json.RawMessage(`[1]`)})
	var ute *json.UnmarshalTypeError
	if !errors.As(err, &ute) || calls.Load() != 0 {
		t.Fatalf("bad data: err = %v, calls %d", err, calls.Load())
	}

	defer func() {
		if recover() == nil {
			t.Fatal("registering a type twice did not panic")
		}
	}()
	conduit.On(r, "person_renamed", func(context.Context, pgx.Tx, conduit.Event, personRenamed) error { return nil })
}
