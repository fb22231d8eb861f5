package conduit_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/conduit-es/conduit"
)

// A name no projection row and no Projector of this Store has: WaitFor
// answers at once instead of waiting out its context.
func TestWaitForUnknownProjection(t *testing.T) {
	t.Parallel()
	store, _ := newStore(t, nil)
	res := appendN(t, store, "a", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := store.WaitFor(ctx, "nobody-runs-this", res.Position)
	took := time.Since(start)
	if !errors.Is(err, conduit.ErrNotFound) || !strings.Contains(err.Error(), `"nobody-runs-this"`) {
		t.Fatalf("WaitFor an unknown projection = %v (after %s), want ErrNotFound naming it", err, took)
	}
	if took > 500*time.Millisecond {
		t.Fatalf("WaitFor an unknown projection took %s", took)
	}
}

// The common flow: a Projector made, its Run started in a goroutine, an
// append, WaitFor. The projection's row may not exist yet when WaitFor
// first looks: a name known through a Projector of this Store waits.
func TestWaitForProjectorNotStartedYet(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	p := newProjector(t, store, &ledger{name: "ledger"}, nil)
	res := appendN(t, store, "a", 3)

	waited := make(chan error, 1)
	go func() { waited <- store.WaitFor(ctx, "ledger", res.Position) }()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := store.WaitFor(short, "ledger", res.Position); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFor before the projector runs = %v, want it to wait (DeadlineExceeded)", err)
	}
	runProjector(t, p)
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("WaitFor = %v", err)
		}
	case <-ctx.Done():
		t.Fatal("WaitFor did not return once the projector ran")
	}
	checkLedgerMatchesLog(t, store, pool)
}

// A projection stalled on a poison event before the position: WaitFor
// reports the stall instead of waiting out its context.
func TestWaitForStalledProjection(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	before := appendN(t, store, "a", 2)
	bad, err := store.Append(context.Background(), "poison", conduit.NoStream, mustEvent(t, "bad", 1))
	if err != nil {
		t.Fatal(err)
	}
	res := appendN(t, store, "b", 2)
	l := &ledger{name: "ledger", fail: func(e conduit.Event) error {
		if e.Type == "bad" {
			return errBoom
		}
		return nil
	}}
	runProjector(t, newProjector(t, store, l, &conduit.ProjectorConfig{MaxAttempts: 1, RetryBackoff: time.Millisecond}))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = store.WaitFor(ctx, "ledger", res.Position)
	if err == nil || ctx.Err() != nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("WaitFor past a poison event = %v, want the stall reported with its reason", err)
	}
	checkStalledError(t, err, "ledger", eventIDAt(t, store, "poison", bad.Version))
	// The events before the poison one were applied: waiting for them works.
	if err := store.WaitFor(ctx, "ledger", before.Position); err != nil {
		t.Fatalf("WaitFor an event before the poison one = %v", err)
	}
}

// checkStalledError asserts err is a *ProjectionStalledError for the
// projection's poison event, matching ErrProjectionStalled.
func checkStalledError(t testing.TB, err error, projection string, eventID uuid.UUID) {
	t.Helper()
	var stalled *conduit.ProjectionStalledError
	if !errors.As(err, &stalled) || !errors.Is(err, conduit.ErrProjectionStalled) {
		t.Fatalf("err = %v, want a *ProjectionStalledError", err)
	}
	if stalled.Projection != projection || stalled.EventID != eventID || !strings.Contains(stalled.Reason, "boom") {
		t.Fatalf("stalled error = %+v, want projection %q, event %s and the reason", stalled, projection, eventID)
	}
}

// Head is the last committed event in global-log order: zero for an empty
// log, never an event of a transaction still open, and an older
// transaction's event once it commits after a younger one.
func TestHead(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	head := func() conduit.Position {
		t.Helper()
		h, err := store.Head(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	if h := head(); !h.IsZero() {
		t.Fatalf("Head of an empty log = %s, want zero", h)
	}
	res := appendN(t, store, "a", 3)
	if h := head(); h != res.Position {
		t.Fatalf("Head = %s, want the last append's %s", h, res.Position)
	}

	// An older transaction holds an append open while a younger one commits.
	older, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer older.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	held, err := store.AppendTx(ctx, older, "held", conduit.NoStream, mustEvent(t, "late", 1))
	if err != nil {
		t.Fatal(err)
	}
	younger := appendN(t, store, "b", 1)
	if h := head(); h != younger.Position {
		t.Fatalf("Head with an append still open = %s, want the younger commit's %s", h, younger.Position)
	}
	if err := older.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if !held.Position.Before(younger.Position) {
		t.Fatalf("the older transaction's event %s sorts after the younger's %s", held.Position, younger.Position)
	}
	if h := head(); h != younger.Position {
		t.Fatalf("Head = %s, want %s: the older commit sorts before it", h, younger.Position)
	}
}

// Status counts the lag exactly up to 10,000 events and estimates it above,
// saying so: its cost must not grow with the lag.
func TestProjectionStatusLagExactThenEstimated(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	if err := newProjector(t, store, &ledger{name: "ledger"}, nil).CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	insertEvents := func(n int) {
		t.Helper()
		if _, err := pool.Exec(ctx, `INSERT INTO conduit.events (stream_id, stream_version, event_id, event_type, data)
			SELECT 'bulk-' || gen_random_uuid(), 1, gen_random_uuid(), 'bulk', '{}' FROM generate_series(1, $1)`, n); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		add       int
		want      int64
		estimated bool
	}{
		{add: 10_000, want: 10_000},
		{add: 5_000, want: 15_000, estimated: true},
	} {
		insertEvents(c.add)
		st, err := store.ProjectionStatus(ctx, "ledger")
		if err != nil {
			t.Fatal(err)
		}
		// No append was rolled back: the estimate from positions is exact here.
		if st.LagEvents != c.want || st.LagEstimated != c.estimated || st.Lag <= 0 {
			t.Fatalf("after %d more events: lag %d (estimated %t, %s), want %d (estimated %t)",
				c.add, st.LagEvents, st.LagEstimated, st.Lag, c.want, c.estimated)
		}
		var exact bool
		if err := pool.QueryRow(ctx, `SELECT lag_exact FROM conduit.projection_status() WHERE name = 'ledger'`).Scan(&exact); err != nil || exact == c.estimated {
			t.Fatalf("SQL lag_exact = %t, %v; want %t", exact, err, !c.estimated)
		}
	}
}
