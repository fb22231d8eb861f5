package conduit_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
)

// What a user's test does: append with plain user code, CatchUp, and the
// read table shows every event; no sleeps, no goroutine.
func TestCatchUpAppliesEverything(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	if _, err := pool.Exec(ctx, `CREATE TABLE public.orders (id text PRIMARY KEY, customer text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	type OrderPlaced struct {
		Customer string `json:"customer"`
	}
	orders := conduit.NewRouter("orders", "public.orders")
	conduit.On(orders, "order_placed", func(ctx context.Context, tx pgx.Tx, e conduit.Event, d OrderPlaced) error {
		_, err := tx.Exec(ctx, `INSERT INTO public.orders VALUES ($1, $2)`, e.StreamID, d.Customer)
		return err
	})
	p, err := conduit.NewProjector(store, orders, &conduit.ProjectorConfig{BatchSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	place := func(from, to int) conduit.AppendResult {
		var res conduit.AppendResult
		for i := from; i < to; i++ {
			e, err := conduit.NewEvent("order_placed", OrderPlaced{Customer: fmt.Sprint("c", i%3)})
			if err != nil {
				t.Fatal(err)
			}
			if res, err = store.Append(ctx, fmt.Sprint("order-", i), conduit.NoStream, e); err != nil {
				t.Fatal(err)
			}
		}
		return res
	}
	countOrders := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM public.orders`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	last := place(0, 10)
	if err := p.CatchUp(ctx); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	if n := countOrders(); n != 10 {
		t.Fatalf("after CatchUp the read table has %d rows, want 10", n)
	}
	st, err := store.ProjectionStatus(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	if st.Checkpoint != last.Position || st.Owner != "" || st.State != conduit.StateStopped {
		t.Fatalf("after CatchUp: status %+v, want the checkpoint at %s and the lease released", st, last.Position)
	}

	// Again, from where it stopped.
	last = place(10, 15)
	if err := p.CatchUp(ctx); err != nil {
		t.Fatalf("second CatchUp: %v", err)
	}
	if n := countOrders(); n != 15 {
		t.Fatalf("after the second CatchUp the read table has %d rows, want 15", n)
	}
	if st, _ := store.ProjectionStatus(ctx, "orders"); st.Checkpoint != last.Position || st.EventsApplied != 15 {
		t.Fatalf("after the second CatchUp: status %+v", st)
	}
}

func TestCatchUpEmptyLog(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	p := newProjector(t, store, &ledger{name: "ledger"}, nil)
	if err := p.CatchUp(ctx); err != nil {
		t.Fatalf("CatchUp on an empty log: %v", err)
	}
	if rows := readLedger(t, pool); len(rows) != 0 {
		t.Fatalf("ledger has %d rows", len(rows))
	}
}

// Under PoisonStop a stall ends CatchUp with the stall; under PoisonPark the
// event is parked and CatchUp goes on to the head.
func TestCatchUpPoisonEvent(t *testing.T) {
	t.Parallel()
	for _, policy := range []conduit.PoisonPolicy{conduit.PoisonStop, conduit.PoisonPark} {
		t.Run(fmt.Sprint("policy=", policy), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			store, pool := newStore(t, nil)
			createLedger(t, pool)
			appendN(t, store, "a", 2)
			bad, err := store.Append(ctx, "poison", conduit.NoStream, mustEvent(t, "bad", 1))
			if err != nil {
				t.Fatal(err)
			}
			last := appendN(t, store, "b", 2)
			l := &ledger{name: "ledger", fail: func(e conduit.Event) error {
				if e.Type == "bad" {
					return errBoom
				}
				return nil
			}}
			p := newProjector(t, store, l, &conduit.ProjectorConfig{Poison: policy, MaxAttempts: 1, RetryBackoff: time.Millisecond})
			badID := eventIDAt(t, store, "poison", bad.Version)

			err = p.CatchUp(ctx)
			st, serr := store.ProjectionStatus(ctx, "ledger")
			if serr != nil {
				t.Fatal(serr)
			}
			if st.Owner != "" {
				t.Fatalf("after CatchUp the lease is still held: %+v", st)
			}
			if policy == conduit.PoisonStop {
				checkStalledError(t, err, "ledger", badID)
				if st.State != conduit.StateStalled || st.StalledEventID != badID || len(readLedger(t, pool)) != 2 {
					t.Fatalf("after a stall: status %+v, %d ledger rows; want stalled at the poison event after 2 rows",
						st, len(readLedger(t, pool)))
				}
				return
			}
			if err != nil {
				t.Fatalf("CatchUp under PoisonPark: %v", err)
			}
			parked, err := store.ParkedEvents(ctx, "ledger")
			if err != nil {
				t.Fatal(err)
			}
			if len(parked) != 1 || parked[0].EventID != badID || st.Checkpoint != last.Position || len(readLedger(t, pool)) != 4 {
				t.Fatalf("after CatchUp: parked %+v, status %+v, %d ledger rows; want the poison event parked, 4 rows",
					parked, st, len(readLedger(t, pool)))
			}
		})
	}
}

// Another instance holds the lease: CatchUp leaves it the work and returns
// once it has passed the head.
func TestCatchUpWaitsForLeaseHolder(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	runProjector(t, newProjector(t, store, &ledger{name: "ledger", by: "a"}, &conduit.ProjectorConfig{InstanceID: "a"}))
	waitFor(t, store, "ledger", appendN(t, store, "s", 2).Position) // a holds the lease
	last := appendN(t, store, "s", 5)

	b := newProjector(t, store, &ledger{name: "ledger", by: "b"}, &conduit.ProjectorConfig{InstanceID: "b"})
	if err := b.CatchUp(ctx); err != nil {
		t.Fatalf("CatchUp beside a running instance: %v", err)
	}
	st, err := store.ProjectionStatus(ctx, "ledger")
	if err != nil {
		t.Fatal(err)
	}
	if st.Owner != "a" || st.Checkpoint.Before(last.Position) {
		t.Fatalf("after CatchUp: status %+v, want a still owner, past %s", st, last.Position)
	}
	var byB int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+ledgerTable+` WHERE applied_by = 'b'`).Scan(&byB); err != nil {
		t.Fatal(err)
	}
	if byB != 0 {
		t.Fatalf("CatchUp applied %d events while another instance held the lease", byB)
	}
	checkLedgerMatchesLog(t, store, pool)
}

// The lease is held by an instance the test plays in SQL: CatchUp waits
// for its checkpoint to pass the head, reports its stall, and takes over
// once its lease expires.
func TestCatchUpStandby(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	p := newProjector(t, store, &ledger{name: "ledger"}, nil)
	if err := p.CatchUp(ctx); err != nil { // registers the projection
		t.Fatal(err)
	}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	exec(`UPDATE conduit.projections SET owner = 'other', epoch = epoch + 1, lease_expires_at = now() + interval '1 hour'
		WHERE name = 'ledger'`)
	catchUp := func() <-chan error {
		done := make(chan error, 1)
		go func() { done <- p.CatchUp(ctx) }()
		return done
	}

	// It waits for the other instance's checkpoint.
	head := appendN(t, store, "s", 3).Position
	done := catchUp()
	select {
	case err := <-done:
		t.Fatalf("CatchUp returned %v before the lease holder passed the head", err)
	case <-time.After(200 * time.Millisecond):
	}
	exec(`UPDATE conduit.projections SET checkpoint_tx = $1::bigint::text::xid8, checkpoint_position = $2
		WHERE name = 'ledger'`, int64(head.TransactionID), head.GlobalPosition)
	if err := <-done; err != nil {
		t.Fatalf("CatchUp once the lease holder passed the head: %v", err)
	}
	if rows := readLedger(t, pool); len(rows) != 0 {
		t.Fatalf("CatchUp applied %d events while another instance held the lease", len(rows))
	}

	// The other instance stalls short of the head.
	res := appendN(t, store, "s", 1)
	poison := eventIDAt(t, store, "s", res.Version)
	exec(`UPDATE conduit.projections SET state = 'stalled', stall_reason = 'boom', stalled_event_id = $1
		WHERE name = 'ledger'`, poison)
	checkStalledError(t, p.CatchUp(ctx), "ledger", poison)

	// Its lease expires (it died): CatchUp takes over and applies the event.
	exec(`UPDATE conduit.projections SET lease_expires_at = now() - interval '1 second' WHERE name = 'ledger'`)
	if err := p.CatchUp(ctx); err != nil {
		t.Fatalf("CatchUp after the holder's lease expired: %v", err)
	}
	if rows := readLedger(t, pool); len(rows) != 1 || rows[0].StreamVersion != res.Version {
		t.Fatalf("ledger after the takeover = %+v, want the one event after the holder's checkpoint", rows)
	}
	if st, _ := store.ProjectionStatus(ctx, "ledger"); st.State != conduit.StateStopped || st.Checkpoint != res.Position {
		t.Fatalf("after the takeover: status %+v", st)
	}
}

// Events of the head's snapshot held behind the safe horizon by an older
// transaction still open: CatchUp waits for them rather than return early.
func TestCatchUpWaitsBehindHorizon(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)                                                 //nolint:errcheck
	if _, err := holder.Exec(ctx, "SELECT pg_current_xact_id()"); err != nil { // holds the horizon from now on
		t.Fatal(err)
	}
	res := appendN(t, store, "s", 2)

	p := newProjector(t, store, &ledger{name: "ledger"}, &conduit.ProjectorConfig{InstanceID: "catcher"})
	done := make(chan error, 1)
	go func() { done <- p.CatchUp(ctx) }()
	// It holds the lease and has run a batch that could read nothing.
	poll(t, 30*time.Second, "CatchUp's first batch", func() bool {
		st, err := store.ProjectionStatus(ctx, "ledger")
		return err == nil && st.Owner == "catcher" && st.State == conduit.StateCaughtUp
	})
	select {
	case err := <-done:
		t.Fatalf("CatchUp returned %v with the head's events behind the horizon", err)
	default:
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	if st, _ := store.ProjectionStatus(ctx, "ledger"); st.Checkpoint != res.Position {
		t.Fatalf("after CatchUp: status %+v, want the checkpoint at %s", st, res.Position)
	}
	checkLedgerMatchesLog(t, store, pool)
}

// slowProjection's handler takes longer than the statement_timeout it sets.
type slowProjection struct{}

func (slowProjection) Name() string { return "slow" }
func (slowProjection) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = '20ms'`); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `SELECT pg_sleep(1)`)
	return err
}

// A statement cancelled by statement_timeout in a handler is a failed
// attempt of that event, not a transient database error: the poison policy
// applies (it used to be retried forever, status running, no stall reason).
func TestProjectorStatementTimeoutIsAnAttempt(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)
	res := appendN(t, store, "s", 1)
	p, err := conduit.NewProjector(store, slowProjection{}, &conduit.ProjectorConfig{MaxAttempts: 2, RetryBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	err = p.CatchUp(ctx)
	var stalled *conduit.ProjectionStalledError
	if !errors.As(err, &stalled) || !strings.Contains(stalled.Reason, "statement timeout") {
		t.Fatalf("CatchUp = %v, want a stall on the statement timeout", err)
	}
	st, err := store.ProjectionStatus(ctx, "slow")
	if err != nil || st.State != conduit.StateStalled || !st.Checkpoint.Before(res.Position) {
		t.Fatalf("status %+v, %v; want stalled before %s", st, err, res.Position)
	}
}
