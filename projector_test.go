package conduit_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
)

func TestProjectorAppliesEachEventOnceInOrder(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendN(t, store, "a", 5)

	p, err := conduit.NewProjector(store, &ledger{name: "ledger"}, &conduit.ProjectorConfig{BatchSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	stop := runProjector(t, p)
	res := appendN(t, store, "b", 7)
	waitFor(t, store, "ledger", res.Position)
	checkLedgerMatchesLog(t, store, pool)

	st, err := store.ProjectionStatus(context.Background(), "ledger")
	if err != nil {
		t.Fatal(err)
	}
	if st.Owner != p.InstanceID() || st.EventsApplied != 12 || st.LagEvents != 0 || st.Checkpoint != res.Position {
		t.Fatalf("status = %+v", st)
	}
	stop()
	st, _ = store.ProjectionStatus(context.Background(), "ledger")
	if st.State != conduit.StateStopped || st.Owner != "" {
		t.Fatalf("after stop: status = %+v", st)
	}
}

func newProjector(t testing.TB, store *conduit.Store, p conduit.Projection, cfg *conduit.ProjectorConfig) *conduit.Projector {
	t.Helper()
	pr, err := conduit.NewProjector(store, p, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return pr
}

// A transaction holding an appended event open while later appends commit:
// the projector must not pass it, and applies it exactly once, in order,
// once it commits. A rolled-back append must not stall it.
func TestProjectorWaitsForLateCommit(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	runProjector(t, newProjector(t, store, &ledger{name: "ledger"}, &conduit.ProjectorConfig{PollInterval: 20 * time.Millisecond}))

	held, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback(ctx) //nolint:errcheck
	heldRes, err := store.AppendTx(ctx, held, "held", conduit.NoStream, mustEvent(t, "late", 1))
	if err != nil {
		t.Fatal(err)
	}
	rolledBack, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.AppendTx(ctx, rolledBack, "gone", conduit.NoStream, mustEvent(t, "never", 1)); err != nil {
		t.Fatal(err)
	}
	later := appendN(t, store, "later", 3)
	if !heldRes.Position.Before(later.Position) {
		t.Fatalf("held %v should sort before later %v", heldRes.Position, later.Position)
	}

	// The projector keeps polling; it must not pass the held event. Wait
	// until it has run several batches since the later appends committed.
	before, _ := store.ProjectionStatus(ctx, "ledger")
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := store.ProjectionStatus(ctx, "ledger")
		if err != nil {
			t.Fatal(err)
		}
		if !st.Checkpoint.Before(heldRes.Position) {
			t.Fatalf("checkpoint %v passed the uncommitted event at %v", st.Checkpoint, heldRes.Position)
		}
		if st.Horizon != nil && st.Horizon.HeldEvents >= 3 && time.Now().After(before.LastProgress.Add(200*time.Millisecond)) {
			break // status names the holder; several polls have gone by
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never reported the horizon holder: %+v", st)
		}
		time.Sleep(20 * time.Millisecond) // polling a status, not waiting for an event
	}
	if rows := readLedger(t, pool); len(rows) != 0 {
		t.Fatalf("ledger has %d rows while the first event is uncommitted", len(rows))
	}
	if err := rolledBack.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := held.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	store.Notify()
	waitFor(t, store, "ledger", later.Position)
	checkLedgerMatchesLog(t, store, pool)
	if rows := readLedger(t, pool); rows[0].StreamID != "held" {
		t.Fatalf("first applied %s, want the held event first", rows[0].StreamID)
	}
}

// Per-stream order equals the projector's order even when transactions
// interleave (the xid inversion case is refused at append time).
func TestProjectorAppliesStreamInVersionOrder(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)

	// T2 writes first (older xid), T1 appends to s and commits, then T2
	// tries to append to s: refused, retried in a new transaction.
	t2, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.AppendTx(ctx, t2, "other", conduit.Any, mustEvent(t, "x", 1)); err != nil {
		t.Fatal(err)
	}
	appendN(t, store, "s", 1)
	_, err = store.AppendTx(ctx, t2, "s", conduit.Any, mustEvent(t, "x", 2))
	if !errors.Is(err, conduit.ErrTransactionOrder) {
		t.Fatalf("append in older transaction: err = %v, want ErrTransactionOrder", err)
	}
	if err := t2.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	res := appendN(t, store, "s", 2)

	runProjector(t, newProjector(t, store, &ledger{name: "ledger"}, nil))
	waitFor(t, store, "ledger", res.Position)
	checkLedgerMatchesLog(t, store, pool)
	checkStreamAppliedInOrder(t, pool, "s", 3)
}

func TestProjectorPoisonStop(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendN(t, store, "a", 2)
	bad, err := store.Append(ctx, "poison", conduit.NoStream, mustEvent(t, "bad", 1))
	if err != nil {
		t.Fatal(err)
	}
	res := appendN(t, store, "b", 2)
	var broken atomic.Bool
	broken.Store(true)
	var attempts atomic.Int32
	l := &ledger{name: "ledger", fail: func(e conduit.Event) error {
		if e.Type == "bad" && broken.Load() {
			attempts.Add(1)
			return errBoom
		}
		return nil
	}}
	runProjector(t, newProjector(t, store, l, &conduit.ProjectorConfig{
		MaxAttempts: 3, RetryBackoff: time.Millisecond, StalledRetryInterval: 50 * time.Millisecond, BatchSize: 10,
	}))
	st := waitForState(t, store, "ledger", conduit.StateStalled)
	if st.StalledEventID != eventIDAt(t, store, "poison", bad.Version) || !strings.Contains(st.StallReason, "boom") {
		t.Fatalf("stalled status = %+v", st)
	}
	// It stopped at the event: the two before are applied, nothing after.
	if rows := readLedger(t, pool); len(rows) != 2 {
		t.Fatalf("ledger has %d rows, want the 2 before the poison event", len(rows))
	}
	if st.LagEvents != 3 {
		t.Fatalf("lag = %d, want 3", st.LagEvents)
	}
	if n := attempts.Load(); n < 3 {
		t.Fatalf("poison event tried %d times, want at least 3", n)
	}
	// While it is stalled, WaitFor past the event reports the stall.
	err = store.WaitFor(ctx, "ledger", res.Position)
	checkStalledError(t, err, "ledger", st.StalledEventID)
	// A fix (here: the handler stops failing) lets it go on by itself.
	broken.Store(false)
	waitForState(t, store, "ledger", conduit.StateCaughtUp)
	waitFor(t, store, "ledger", res.Position)
	checkLedgerMatchesLog(t, store, pool)
	st, _ = store.ProjectionStatus(ctx, "ledger")
	if st.State == conduit.StateStalled || st.StallReason != "" {
		t.Fatalf("after the fix: %+v", st)
	}
}

func TestProjectorPoisonParkRetrySkip(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendN(t, store, "a", 2)
	if _, err := store.Append(ctx, "poison-1", conduit.NoStream, mustEvent(t, "bad", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, "poison-2", conduit.NoStream, mustEvent(t, "bad", 2)); err != nil {
		t.Fatal(err)
	}
	res := appendN(t, store, "b", 2)
	var broken atomic.Bool
	broken.Store(true)
	l := &ledger{name: "ledger", fail: func(e conduit.Event) error {
		if e.Type == "bad" && broken.Load() {
			return errBoom
		}
		return nil
	}}
	runProjector(t, newProjector(t, store, l, &conduit.ProjectorConfig{
		Poison: conduit.PoisonPark, MaxAttempts: 2, RetryBackoff: time.Millisecond, PollInterval: 20 * time.Millisecond,
	}))
	waitFor(t, store, "ledger", res.Position)
	if rows := readLedger(t, pool); len(rows) != 4 {
		t.Fatalf("ledger has %d rows, want 4 (all but the two parked)", len(rows))
	}
	parked, err := store.ParkedEvents(ctx, "ledger")
	if err != nil {
		t.Fatal(err)
	}
	if len(parked) != 2 || parked[0].StreamID != "poison-1" || parked[1].StreamID != "poison-2" ||
		parked[0].Status != "parked" || !strings.Contains(parked[0].Error, "boom") || parked[0].Attempts != 2 {
		t.Fatalf("parked = %+v", parked)
	}
	st, _ := store.ProjectionStatus(ctx, "ledger")
	if st.Parked != 2 || st.State == conduit.StateStalled {
		t.Fatalf("status = %+v", st)
	}

	// Retry while still broken: parked again, with another attempt.
	if err := store.RetryParked(ctx, "ledger", parked[0].EventID); err != nil {
		t.Fatal(err)
	}
	waitParked(t, store, parked[0].EventID, func(p conduit.ParkedEvent) bool { return p.Status == "parked" && p.Attempts == 3 })
	// Fixed: a retry applies it and it leaves the table.
	broken.Store(false)
	if err := store.RetryParked(ctx, "ledger", parked[0].EventID); err != nil {
		t.Fatal(err)
	}
	waitParked(t, store, parked[0].EventID, nil)
	// Skip the other: it stays listed as skipped, never applied.
	if err := store.SkipParked(ctx, "ledger", parked[1].EventID); err != nil {
		t.Fatal(err)
	}
	if err := store.SkipParked(ctx, "ledger", uuid.New()); !errors.Is(err, conduit.ErrNotFound) {
		t.Fatalf("skip unknown: %v", err)
	}
	if err := store.RetryParked(ctx, "ledger", parked[1].EventID); !errors.Is(err, conduit.ErrNotFound) {
		t.Fatalf("retry a skipped event: %v, want ErrNotFound", err)
	}
	rows := readLedger(t, pool)
	if len(rows) != 5 || rows[4].StreamID != "poison-1" {
		t.Fatalf("ledger after retry = %+v", rows)
	}
	st, _ = store.ProjectionStatus(ctx, "ledger")
	if st.Parked != 0 {
		t.Fatalf("parked count = %d after retry and skip", st.Parked)
	}
}

// waitParked waits until the parked event matches ok, or is gone (ok nil).
func waitParked(t *testing.T, store *conduit.Store, id uuid.UUID, ok func(conduit.ParkedEvent) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		parked, err := store.ParkedEvents(context.Background(), "ledger")
		if err != nil {
			t.Fatal(err)
		}
		idx := slices.IndexFunc(parked, func(p conduit.ParkedEvent) bool { return p.EventID == id })
		if (ok == nil && idx < 0) || (ok != nil && idx >= 0 && ok(parked[idx])) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("parked event %s never reached the expected state", id)
}

func waitForState(t testing.TB, store *conduit.Store, name string, want conduit.ProjectionState) conduit.ProjectionStatus {
	t.Helper()
	return waitStatus(t, store, name, "state "+string(want), func(st conduit.ProjectionStatus) bool { return st.State == want })
}

// waitStatus polls the projection's status until ok holds, failing the test
// after a minute, and returns it. For database states nothing signals.
func waitStatus(t testing.TB, store *conduit.Store, name, what string, ok func(conduit.ProjectionStatus) bool) conduit.ProjectionStatus {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := store.ProjectionStatus(context.Background(), name)
		if err == nil && ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("projection %s never reached %s: %+v (err %v)", name, what, st, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var errBoom = errors.New("boom")

func TestWaitForDeadline(t *testing.T) {
	t.Parallel()
	store, _ := newStore(t, nil)
	newProjector(t, store, &ledger{name: "never-run"}, nil) // known, so WaitFor waits
	res := appendN(t, store, "a", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := store.WaitFor(ctx, "never-run", res.Position)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitFor = %v, want DeadlineExceeded", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("WaitFor overran its deadline: %s", time.Since(start))
	}
}

// Only one instance applies; a stale owner (its epoch bumped by a takeover)
// cannot move the checkpoint; a standby takes over after the owner stops.
func TestProjectorLeaseFencing(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	cfg := func(id string) *conduit.ProjectorConfig {
		return &conduit.ProjectorConfig{InstanceID: id, LeaseDuration: 500 * time.Millisecond, PollInterval: 20 * time.Millisecond}
	}
	stopA := runProjector(t, newProjector(t, store, &ledger{name: "ledger", by: "a"}, cfg("a")))
	res := appendN(t, store, "s", 3)
	waitFor(t, store, "ledger", res.Position)
	runProjector(t, newProjector(t, store, &ledger{name: "ledger", by: "b"}, cfg("b")))
	res = appendN(t, store, "s", 3)
	waitFor(t, store, "ledger", res.Position)
	if st, _ := store.ProjectionStatus(ctx, "ledger"); st.Owner != "a" {
		t.Fatalf("owner = %q, want a to keep its lease", st.Owner)
	}
	var byB int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+ledgerTable+` WHERE applied_by = 'b'`).Scan(&byB); err != nil {
		t.Fatal(err)
	}
	if byB != 0 {
		t.Fatalf("standby b applied %d events while a held the lease", byB)
	}
	stopA()
	res = appendN(t, store, "s", 3)
	waitFor(t, store, "ledger", res.Position)
	if st, _ := store.ProjectionStatus(ctx, "ledger"); st.Owner != "b" || st.Epoch < 2 {
		t.Fatalf("after a stopped: %+v", st)
	}
	checkLedgerMatchesLog(t, store, pool)

	// A stale owner: steal b's lease in the database (as a takeover after a
	// pause would); b must not commit another batch under its old epoch.
	if _, err := pool.Exec(ctx, `UPDATE conduit.projections SET owner = 'thief', epoch = epoch + 1, lease_expires_at = now() + interval '1 hour' WHERE name = 'ledger'`); err != nil {
		t.Fatal(err)
	}
	more := appendN(t, store, "s", 2)
	ctx2, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := store.WaitFor(ctx2, "ledger", more.Position); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stale owner moved the checkpoint: WaitFor = %v", err)
	}
	if n := len(readLedger(t, pool)); n != 9 {
		t.Fatalf("ledger has %d rows, want 9: the stale owner applied events", n)
	}
}

func TestProjectorTypeFilter(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	for i := range 10 {
		typ := "skip"
		if i%3 == 0 {
			typ = "keep"
		}
		if _, err := store.Append(ctx, "s", conduit.Any, mustEvent(t, typ, i)); err != nil {
			t.Fatal(err)
		}
	}
	res, _ := store.Append(ctx, "s", conduit.Any, mustEvent(t, "skip", 99))
	runProjector(t, newProjector(t, store, &ledger{name: "ledger", types: []string{"keep"}}, &conduit.ProjectorConfig{BatchSize: 4}))
	waitFor(t, store, "ledger", res.Position) // the checkpoint passes unhandled events too
	rows := readLedger(t, pool)
	if len(rows) != 4 {
		t.Fatalf("applied %d events, want the 4 of type keep", len(rows))
	}
}

func TestRebuildWhileAppending(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	runProjector(t, newProjector(t, store, &ledger{name: "ledger"}, &conduit.ProjectorConfig{BatchSize: 50, PollInterval: 20 * time.Millisecond}))
	if err := store.RebuildProjection(ctx, "nope"); !errors.Is(err, conduit.ErrNotFound) {
		t.Fatalf("rebuild unknown: %v", err)
	}
	appendN(t, store, "s", 100)

	done := make(chan struct{})
	var last atomic.Pointer[conduit.AppendResult]
	go func() {
		defer close(done)
		for i := range 200 {
			res, err := store.Append(context.Background(), fmt.Sprintf("w-%d", i%7), conduit.Any, mustEvent(t, "tick", i))
			if err != nil {
				t.Error(err)
				return
			}
			last.Store(&res)
		}
	}()
	// Rebuild twice, once from SQL as a user at psql would.
	if err := store.RebuildProjection(ctx, "ledger"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `SELECT conduit.rebuild_projection('ledger')`); err != nil {
		t.Fatal(err)
	}
	<-done
	waitFor(t, store, "ledger", last.Load().Position)
	checkLedgerMatchesLog(t, store, pool)
	st := waitForState(t, store, "ledger", conduit.StateCaughtUp)
	if st.EventsApplied != 300 || !st.RebuildStarted.IsZero() {
		t.Fatalf("status after rebuild = %+v", st)
	}
}

func eventIDAt(t *testing.T, store *conduit.Store, stream string, version int64) uuid.UUID {
	t.Helper()
	for e, err := range store.ReadStream(context.Background(), stream, version) {
		if err != nil {
			t.Fatal(err)
		}
		return e.ID
	}
	t.Fatalf("no event %s@%d", stream, version)
	return uuid.Nil
}

// settingProbe records the batch transaction's synchronous_commit.
type settingProbe struct{ seen chan string }

func (settingProbe) Name() string { return "probe" }

func (p settingProbe) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	var v string
	if err := tx.QueryRow(ctx, `SELECT current_setting('synchronous_commit')`).Scan(&v); err != nil {
		return err
	}
	select {
	case p.seen <- v:
	default:
	}
	return nil
}

// Batches commit without waiting for the WAL flush unless DurableCommit.
func TestProjectorSynchronousCommit(t *testing.T) {
	t.Parallel()
	for _, durable := range []bool{false, true} {
		t.Run(fmt.Sprint("durable=", durable), func(t *testing.T) {
			t.Parallel()
			store, _ := newStore(t, nil)
			appendN(t, store, "a", 1)
			probe := settingProbe{seen: make(chan string, 1)}
			runProjector(t, newProjector(t, store, probe, &conduit.ProjectorConfig{DurableCommit: durable}))
			want := "off"
			if durable {
				want = "on" // the server's default here
			}
			select {
			case got := <-probe.seen:
				if got != want {
					t.Fatalf("synchronous_commit in a batch = %q, want %q", got, want)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the projection never ran")
			}
		})
	}
}

func TestProjectorRunTwiceRefused(t *testing.T) {
	t.Parallel()
	store, _ := newStore(t, nil)
	p := newProjector(t, store, &ledger{name: "ledger"}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	waitForState(t, store, "ledger", conduit.StateCaughtUp)
	if err := p.Run(context.Background()); err == nil {
		t.Fatal("a second concurrent Run of one Projector was accepted")
	}
	if err := p.CatchUp(context.Background()); err == nil {
		t.Fatal("CatchUp of a Projector whose Run runs was accepted")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
