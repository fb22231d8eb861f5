package conduit_test

// Fault injection for async projectors (issue 3): a projector process
// killed between applying rows and committing, pg_terminate_backend on the
// listener, the projector's and the appender's connections, notifications
// dropped, poll-only mode, and three competing instances with kills and a
// paused owner. Every test ends by comparing the read tables with the log:
// each event applied exactly once, in log order, and a read table equal to
// a fold of the events. (A PostgreSQL restart is in restart_test.go.)

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// The fault projection's read tables besides the ledger: balances, a fold
// of the deposits per stream; fence, one row per application with the
// lease's owner and epoch seen in the applying transaction.
const (
	balancesTable = "public.fault_balances"
	fenceTable    = "public.fault_fence"
)

func createFaultTables(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	createLedger(t, pool)
	_, err := pool.Exec(context.Background(), `
		CREATE TABLE `+balancesTable+` (stream_id text PRIMARY KEY, total bigint NOT NULL, events bigint NOT NULL);
		CREATE TABLE `+fenceTable+` (seq bigserial PRIMARY KEY, event_id uuid NOT NULL, epoch bigint NOT NULL,
			owner text NOT NULL, applied_by text NOT NULL)`)
	if err != nil {
		t.Fatal(err)
	}
}

// faultDepositData is the body of the "deposit" events these tests append.
// Stall asks the subprocess helper to stop in the middle of the batch that
// applies the event (see projector_process_test.go).
type faultDepositData struct {
	Amount int64 `json:"amount"`
	Stall  bool  `json:"stall,omitempty"`
}

func faultDeposit(t testing.TB, amount int64, stall bool) conduit.EventData {
	t.Helper()
	return withID(mustEvent(t, "deposit", faultDepositData{Amount: amount, Stall: stall}), uuid.New())
}

// faultProjection writes a ledger row, folds the deposit into its stream's
// balance and records the lease it applies under, then calls hook (if any)
// with the rows written and the transaction still open.
type faultProjection struct {
	name string
	by   string // the instance id: recorded as applied_by
	hook func(ctx context.Context, tx pgx.Tx, e conduit.Event) error
}

func (p *faultProjection) Name() string { return p.name }

func (p *faultProjection) ReadTables() []string {
	return []string{ledgerTable, balancesTable, fenceTable}
}

func (p *faultProjection) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	if err := (&ledger{name: p.name, by: p.by}).Apply(ctx, tx, e); err != nil {
		return err
	}
	var d faultDepositData
	if err := json.Unmarshal(e.Data, &d); err != nil {
		return fmt.Errorf("event %s: %w", e.ID, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+balancesTable+` AS b (stream_id, total, events) VALUES ($1, $2, 1)
		ON CONFLICT (stream_id) DO UPDATE SET total = b.total + EXCLUDED.total, events = b.events + 1`,
		e.StreamID, d.Amount); err != nil {
		return err
	}
	// The projection's row is locked by this batch: its owner and epoch are
	// the lease this transaction applies under.
	tag, err := tx.Exec(ctx, `INSERT INTO `+fenceTable+` (event_id, epoch, owner, applied_by)
		SELECT $1, epoch, COALESCE(owner, ''), $2 FROM conduit.projections WHERE name = $3`, e.ID, p.by, p.name)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("no projection row for %q", p.name)
	}
	if p.hook != nil {
		return p.hook(ctx, tx, e)
	}
	return nil
}

// checkFaultTables asserts what every fault test must end with: the ledger
// holds each event of the log once, in log order; the balances equal a fold
// of the events; along the log, the applying lease's epoch never decreases,
// each epoch has one owner, and the owner is the instance that applied. It
// returns the epochs seen, in order.
func checkFaultTables(t testing.TB, store *conduit.Store, pool *pgxpool.Pool) []int64 {
	t.Helper()
	checkLedgerMatchesLog(t, store, pool)
	ctx := context.Background()

	type total struct{ Total, Events int64 }
	want := map[string]total{}
	rows, err := pool.Query(ctx, `SELECT stream_id, data FROM conduit.events ORDER BY transaction_id, global_position`)
	if err != nil {
		t.Fatal(err)
	}
	var (
		stream string
		data   []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&stream, &data}, func() error {
		var d faultDepositData
		if err := json.Unmarshal(data, &d); err != nil {
			return err
		}
		w := want[stream]
		want[stream] = total{w.Total + d.Amount, w.Events + 1}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]total{}
	rows, err = pool.Query(ctx, `SELECT stream_id, total, events FROM `+balancesTable)
	if err != nil {
		t.Fatal(err)
	}
	var tot total
	_, err = pgx.ForEachRow(rows, []any{&stream, &tot.Total, &tot.Events}, func() error {
		got[stream] = tot
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("balances has %d streams, the fold of the log %d", len(got), len(want))
	}
	for s, w := range want {
		if got[s] != w {
			t.Errorf("balance of %q = %+v, fold of the log = %+v", s, got[s], w)
		}
	}

	var fenceRows, events int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+fenceTable+`), (SELECT count(*) FROM conduit.events)`).
		Scan(&fenceRows, &events); err != nil {
		t.Fatal(err)
	}
	if fenceRows != events {
		t.Fatalf("fence has %d rows, log has %d events", fenceRows, events)
	}
	rows, err = pool.Query(ctx, `SELECT f.event_id::text, f.epoch, f.owner, f.applied_by
		FROM `+fenceTable+` f JOIN conduit.events e ON e.event_id = f.event_id
		ORDER BY e.transaction_id, e.global_position, f.seq`)
	if err != nil {
		t.Fatal(err)
	}
	var (
		id, owner, by string
		epoch, prev   int64
		epochs        []int64
	)
	owners := map[int64]string{}
	_, err = pgx.ForEachRow(rows, []any{&id, &epoch, &owner, &by}, func() error {
		switch {
		case epoch < prev:
			return fmt.Errorf("event %s applied under epoch %d after an event applied under epoch %d", id, epoch, prev)
		case owner != by:
			return fmt.Errorf("event %s applied by %q while %q held the lease (epoch %d)", id, by, owner, epoch)
		case owners[epoch] != "" && owners[epoch] != owner:
			return fmt.Errorf("epoch %d held by both %q and %q", epoch, owners[epoch], owner)
		}
		owners[epoch] = owner
		if epoch != prev {
			epochs = append(epochs, epoch)
		}
		prev = epoch
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return epochs
}

// openStore opens a store on url through its own pool whose connections
// carry application name app, so a test can find and terminate them.
func openStore(t testing.TB, url, app string, cfg *conduit.Config) (*conduit.Store, *pgxpool.Pool) {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.ConnConfig.RuntimeParams["application_name"] = app
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := conduit.NewStore(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	return store, pool
}

// startFaultProjector runs a faultProjection named name as instance id.
func startFaultProjector(t testing.TB, store *conduit.Store, name, id string, cfg conduit.ProjectorConfig,
	hook func(context.Context, pgx.Tx, conduit.Event) error) (stop func()) {
	t.Helper()
	cfg.InstanceID = id
	p, err := conduit.NewProjector(store, &faultProjection{name: name, by: id, hook: hook}, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	return runProjector(t, p)
}

// terminate runs pg_terminate_backend on the sessions of the pool's database
// matching where (an expression over pg_stat_activity, with args), waiting
// until each is gone, and returns how many it terminated.
func terminate(t testing.TB, admin *pgxpool.Pool, where string, args ...any) int {
	t.Helper()
	var n int
	err := admin.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000))
		FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND (`+where+`)`, args...).Scan(&n)
	if err != nil {
		t.Fatalf("terminate sessions where %s: %v", where, err)
	}
	return n
}

// appendRetry appends events, retrying with the same event ids (which makes
// the append idempotent) on any error that may be the connection's or the
// server's, until ctx ends: an append whose outcome is unknown is stored
// once whether or not its first attempt committed.
func appendRetry(ctx context.Context, store *conduit.Store, stream string, events ...conduit.EventData) (conduit.AppendResult, error) {
	wait := 20 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := store.Append(actx, stream, conduit.Any, events...)
		cancel()
		if err == nil {
			return res, nil
		}
		if !conduit.IsOutcomeUnknown(err) {
			return res, err // refused, or an error no resend cures
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, fmt.Errorf("append to %q: %w (last error: %w)", stream, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
}

// lastLogPosition returns the position of the log's last event (zero if none).
func lastLogPosition(t testing.TB, pool *pgxpool.Pool) conduit.Position {
	t.Helper()
	var tx, pos int64
	err := pool.QueryRow(context.Background(), `SELECT transaction_id::text::bigint, global_position FROM conduit.events
		ORDER BY transaction_id DESC, global_position DESC LIMIT 1`).Scan(&tx, &pos)
	if errors.Is(err, pgx.ErrNoRows) {
		return conduit.Position{}
	}
	if err != nil {
		t.Fatal(err)
	}
	return conduit.Position{TransactionID: uint64(tx), GlobalPosition: pos}
}

// poll calls cond every few milliseconds until it is true, failing the test
// after timeout. For database states that nothing signals.
func poll(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitListenerReconnected waits until store's listener is listening on a
// connection other than old.
func waitListenerReconnected(t testing.TB, store *conduit.Store, old uint32) uint32 {
	t.Helper()
	var pid uint32
	poll(t, 30*time.Second, "the listener to reconnect", func() bool {
		pid = conduit.ListenerPID(store)
		return pid != 0 && pid != old
	})
	return pid
}

func waitListenerReady(t testing.TB, store *conduit.Store) {
	t.Helper()
	select {
	case <-conduit.ListenerReady(store):
	case <-time.After(30 * time.Second):
		t.Fatal("the listener did not start")
	}
}

// TestProjectorCrashBetweenApplyAndCommit kills (SIGKILL) a projector
// process while its batch has written read-table rows but not committed;
// another instance takes over once the lease expires and every event ends up
// applied exactly once.
func TestProjectorCrashBetweenApplyAndCommit(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, nil)
	createFaultTables(t, pool)
	ctx := testContext(t)

	const n, stallAt = 40, 25
	var stallID uuid.UUID
	for i := range n {
		e := faultDeposit(t, int64(i+1), i+1 == stallAt)
		if i+1 == stallAt {
			stallID = e.ID
		}
		if _, err := store.Append(ctx, fmt.Sprintf("acct-%d", i%4), conduit.Any, e); err != nil {
			t.Fatal(err)
		}
	}

	h := startHelper(t, helperSpec{
		URL: pool.Config().ConnString(), Projection: "crash", Instance: "doomed",
		BatchSize: 10, LeaseDuration: time.Second, PollInterval: 100 * time.Millisecond,
	})
	if got := h.expect(t, "stall"); got != stallID.String() {
		t.Fatalf("helper stalled on %s, want %s", got, stallID)
	}
	// The batch holding event stallAt has written its rows and not committed.
	h.kill(t)

	// Nothing of the killed batch is visible; what is, is the committed
	// prefix up to the checkpoint.
	st, err := store.ProjectionStatus(ctx, "crash")
	if err != nil {
		t.Fatal(err)
	}
	if st.Owner != "doomed" || st.Epoch != 1 {
		t.Fatalf("after the kill: status = %+v, want the lease still held by the dead instance", st)
	}
	ledgerRows := readLedger(t, pool)
	if int64(len(ledgerRows)) != st.EventsApplied || len(ledgerRows) >= stallAt {
		t.Fatalf("after the kill: %d ledger rows, %d events applied by the status, stall at event %d",
			len(ledgerRows), st.EventsApplied, stallAt)
	}
	for _, r := range ledgerRows {
		if r.GlobalPosition > st.Checkpoint.GlobalPosition {
			t.Fatalf("after the kill: ledger has event at %d past the checkpoint %s", r.GlobalPosition, st.Checkpoint)
		}
	}

	// More appends while no instance runs, then a new instance.
	for i := range 10 {
		if _, err := store.Append(ctx, fmt.Sprintf("acct-%d", i%4), conduit.Any, faultDeposit(t, 100, false)); err != nil {
			t.Fatal(err)
		}
	}
	startFaultProjector(t, store, "crash", "successor",
		conduit.ProjectorConfig{BatchSize: 10, LeaseDuration: time.Second, PollInterval: 100 * time.Millisecond}, nil)
	waitFor(t, store, "crash", lastLogPosition(t, pool))
	epochs := checkFaultTables(t, store, pool)
	if !slices.Equal(epochs, []int64{1, 2}) {
		t.Fatalf("applied under epochs %v, want [1 2] (the killed instance, then its successor)", epochs)
	}
}

// TestProjectorSurvivesListenerTermination terminates the listener's
// connection (twice). The projector polls once a minute and the appender is
// another Store, so only NOTIFY can wake the projector quickly: after each
// reconnect new appends must be applied well within the poll interval.
func TestProjectorSurvivesListenerTermination(t *testing.T) {
	t.Parallel()
	_, pool := newStore(t, nil)
	createFaultTables(t, pool)
	url := pool.Config().ConnString()
	appender, _ := openStore(t, url, "fault-appender", nil)
	proj, _ := openStore(t, url, "fault-projector", nil)
	ctx := testContext(t)

	const pollInterval = 10 * time.Minute
	startFaultProjector(t, proj, "listen", "p1", conduit.ProjectorConfig{PollInterval: pollInterval}, nil)
	waitListenerReady(t, proj)

	// appendAndWait appends through the other store until the projector,
	// which only NOTIFY can wake, has applied everything.
	appendAndWait := func(what string) {
		t.Helper()
		if err := appendUntilApplied(ctx, appender, proj, "listen", 30*time.Second); err != nil {
			t.Fatalf("%s: the projector polling every %s was not woken by NOTIFY: %v", what, pollInterval, err)
		}
	}
	appendAndWait("before any fault")

	for round := range 2 {
		old := conduit.ListenerPID(proj)
		if n := terminate(t, pool, "pid = $1", int(old)); n != 1 {
			t.Fatalf("terminated %d sessions, want the listener's (pid %d)", n, old)
		}
		// Appends while the listener may be down: their notifications
		// are lost, the reconnect's catch-up finds them.
		for i := range 3 {
			if _, err := appender.Append(ctx, "acct-down", conduit.Any, faultDeposit(t, int64(i), false)); err != nil {
				t.Fatal(err)
			}
		}
		waitListenerReconnected(t, proj, old)
		appendAndWait(fmt.Sprintf("after listener termination %d", round+1))
	}
	waitFor(t, proj, "listen", lastLogPosition(t, pool))
	checkFaultTables(t, proj, pool)
}

// TestProjectorSurvivesBatchConnectionTermination terminates the
// projector's connection in the middle of a batch (rows written, not
// committed), then every connection of the projector's store while it is
// idle. It goes on without a restart and applies everything exactly once.
func TestProjectorSurvivesBatchConnectionTermination(t *testing.T) {
	t.Parallel()
	_, pool := newStore(t, nil)
	createFaultTables(t, pool)
	url := pool.Config().ConnString()
	appender, _ := openStore(t, url, "fault-appender", nil)
	proj, _ := openStore(t, url, "fault-projector", nil)
	ctx := testContext(t)

	var target atomic.Value // uuid.UUID: the event whose batch is cut
	target.Store(uuid.Nil)
	pids := make(chan int, 1)
	resume := make(chan struct{})
	var fired atomic.Bool
	hook := func(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
		if e.ID != target.Load().(uuid.UUID) || !fired.CompareAndSwap(false, true) {
			return nil
		}
		var pid int
		if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			return err
		}
		pids <- pid
		select {
		case <-resume:
		case <-ctx.Done():
		}
		return nil // the transaction's connection is gone: the checkpoint write fails
	}

	var events []conduit.EventData
	for i := range 30 {
		events = append(events, faultDeposit(t, int64(i), false))
	}
	target.Store(events[17].ID)
	for i, e := range events {
		if _, err := appender.Append(ctx, fmt.Sprintf("acct-%d", i%3), conduit.Any, e); err != nil {
			t.Fatal(err)
		}
	}
	startFaultProjector(t, proj, "cut", "p1",
		conduit.ProjectorConfig{BatchSize: 8, RetryBackoff: 20 * time.Millisecond}, hook)

	var pid int
	select {
	case pid = <-pids:
	case <-time.After(60 * time.Second):
		t.Fatal("the projector never applied the target event")
	}
	if n := terminate(t, pool, "pid = $1", pid); n != 1 {
		t.Fatalf("terminated %d sessions, want the batch's (pid %d)", n, pid)
	}
	close(resume)
	waitFor(t, proj, "cut", lastLogPosition(t, pool))
	checkFaultTables(t, proj, pool)

	// Cut every connection of the projector's store (pool and listener)
	// while it is idle; new appends are still applied.
	old := conduit.ListenerPID(proj)
	if n := terminate(t, pool, "application_name = 'fault-projector'"); n == 0 {
		t.Fatal("no projector session to terminate")
	}
	var res conduit.AppendResult
	for i := range 10 {
		var err error
		if res, err = appender.Append(ctx, fmt.Sprintf("acct-%d", i%3), conduit.Any, faultDeposit(t, 1000, false)); err != nil {
			t.Fatal(err)
		}
	}
	// Waiting through the appender's store: WaitFor on proj could meet
	// one of the connections just cut (see TestWaitForSurvivesTerminatedConnection).
	waitFor(t, appender, "cut", res.Position)
	waitListenerReconnected(t, proj, old)
	res = appendDeposits(t, ctx, appender, 3)
	waitFor(t, appender, "cut", res.Position)
	epochs := checkFaultTables(t, proj, pool)
	if !slices.Equal(epochs, []int64{1}) {
		t.Fatalf("applied under epochs %v, want [1]: the projector kept its lease", epochs)
	}
}

// TestWaitForSurvivesTerminatedConnection: WaitFor's connection is cut
// (an idle pooled connection, as after a failover or an idle timeout); it
// goes on waiting instead of failing, as the projector itself does.
func TestWaitForSurvivesTerminatedConnection(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, nil)
	createFaultTables(t, pool)
	ctx := testContext(t)
	waiter, _ := openStore(t, pool.Config().ConnString(), "fault-waiter", nil)
	startFaultProjector(t, store, "waited", "p1", conduit.ProjectorConfig{}, nil)
	// Through store first: the waiter, which made no Projector, knows the
	// projection only once it has run.
	res := appendDeposits(t, ctx, store, 3)
	waitFor(t, store, "waited", res.Position)
	waitFor(t, waiter, "waited", res.Position) // the waiter's pool has a connection
	if n := terminate(t, pool, "application_name = 'fault-waiter'"); n == 0 {
		t.Fatal("no waiter session to terminate")
	}
	waitFor(t, waiter, "waited", appendDeposits(t, ctx, store, 3).Position)
}

// TestProjectorWakeNotLostBehindHorizon: a projector is woken for an event
// while an unrelated write transaction holds the safe horizon below it, so
// the batch it runs cannot read the event yet. Once that transaction ends,
// the projector must read the event promptly, not a poll interval later:
// any write transaction in the cluster (another projector's batch, a
// request's own writes) open at the moment of a wake-up would otherwise cost
// a whole PollInterval of latency.
func TestProjectorWakeNotLostBehindHorizon(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, nil)
	createFaultTables(t, pool)
	ctx := testContext(t)

	// Poll-only, so that the only wake-up is the in-process one of the
	// append below, and the projector is quiet until then.
	const pollInterval = 10 * time.Minute
	startFaultProjector(t, store, "horizon", "p1", conduit.ProjectorConfig{PollOnly: true, PollInterval: pollInterval}, nil)
	updatedAt := func() time.Time {
		var at time.Time
		err := pool.QueryRow(ctx, `SELECT updated_at FROM conduit.projections WHERE name = 'horizon'`).Scan(&at)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			t.Fatal(err)
		}
		return at
	}
	poll(t, 30*time.Second, "the projector's first batch", func() bool {
		st, err := store.ProjectionStatus(ctx, "horizon")
		return err == nil && st.State == conduit.StateCaughtUp
	})
	before := updatedAt()

	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx) //nolint:errcheck
	// Taking a transaction id makes it a write transaction: it holds the
	// safe horizon from now on.
	if _, err := holder.Exec(ctx, "SELECT pg_current_xact_id()"); err != nil {
		t.Fatal(err)
	}
	res, err := store.Append(ctx, "acct-held", conduit.Any, faultDeposit(t, 5, false))
	if err != nil {
		t.Fatal(err)
	}
	appended := time.Now()
	// The append woke the projector; its batch ran and could not read the
	// event.
	poll(t, 30*time.Second, "the batch after the wake-up", func() bool { return updatedAt().After(before) })
	if st, err := store.ProjectionStatus(ctx, "horizon"); err != nil || st.EventsApplied != 0 {
		t.Fatalf("status = %+v, %v: the event was applied behind the horizon", st, err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// Other transactions in the cluster (parallel tests creating
	// databases) may hold the horizon a while longer. A projector that
	// looks again with a backoff may then wait about as long again as the
	// event was held; one that waits for its next poll, 10 minutes.
	waitHorizon(t, ctx, pool, res.Position.TransactionID)
	held := time.Since(appended)
	limit := 10*time.Second + 2*held
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if err := store.WaitFor(wctx, "horizon", res.Position); err != nil {
		t.Fatalf("the projector did not read the event within %s of the horizon passing it (held %s; it polls every %s): %v",
			limit, held.Round(time.Millisecond), pollInterval, err)
	}
	checkFaultTables(t, store, pool)
}

// appendUntilApplied appends a deposit through from, then another every
// 100 ms, until the projection (waited for through waiter) has applied all
// of them, or until timeout. Every append is a new wake-up (a NOTIFY, or an
// in-process one), so the projector must be woken, not poll, to pass
// within a timeout far below its poll interval; retrying with fresh appends
// keeps one wake-up that meets the safe horizon held back by some unrelated
// transaction from failing the test (that case has its own test,
// TestProjectorWakeNotLostBehindHorizon). Errors of appends and waits are
// retried until timeout (the server may be restarting).
func appendUntilApplied(ctx context.Context, from, waiter *conduit.Store, projection string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for i := 0; ; i++ {
		e, err := conduit.NewEvent("deposit", faultDepositData{Amount: int64(i)})
		if err != nil {
			return err
		}
		e.ID = uuid.New()
		res, err := appendRetry(ctx, from, "acct-wake", e)
		if err != nil {
			if last != nil {
				return fmt.Errorf("%w (last wait: %w)", err, last)
			}
			return err
		}
		wctx, wcancel := context.WithTimeout(ctx, 100*time.Millisecond)
		last = waiter.WaitFor(wctx, projection, res.Position)
		wcancel()
		if last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s did not pass the latest of %d appends within %s: %w", projection, i+1, timeout, last)
		}
	}
}

// appendDeposits appends n deposits to one stream and returns the last result.
func appendDeposits(t testing.TB, ctx context.Context, store *conduit.Store, n int) conduit.AppendResult {
	t.Helper()
	var res conduit.AppendResult
	for i := range n {
		var err error
		if res, err = store.Append(ctx, "acct-more", conduit.Any, faultDeposit(t, int64(i), false)); err != nil {
			t.Fatal(err)
		}
	}
	return res
}

// TestProjectorSurvivesAppenderConnectionTermination terminates an
// appender's connection in the middle of its append (the row written, the
// transaction holding the safe horizon back), then all the appender's
// connections. The projector does not stall on the rolled-back append; the
// appender's retry with the same event ids stores the event once.
func TestProjectorSurvivesAppenderConnectionTermination(t *testing.T) {
	t.Parallel()
	_, pool := newStore(t, nil)
	createFaultTables(t, pool)
	url := pool.Config().ConnString()
	appender, _ := openStore(t, url, "fault-appender", nil)
	proj, _ := openStore(t, url, "fault-projector", nil)
	ctx := testContext(t)

	// Appends of a "held" deposit wait, after writing their row, for an
	// advisory lock the test holds.
	_, err := pool.Exec(ctx, `
		CREATE FUNCTION public.fault_hold() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$;
		CREATE TRIGGER fault_hold AFTER INSERT ON conduit.events FOR EACH ROW
			WHEN (NEW.stream_id = 'held') EXECUTE FUNCTION public.fault_hold()`)
	if err != nil {
		t.Fatal(err)
	}
	startFaultProjector(t, proj, "appcut", "p1", conduit.ProjectorConfig{RetryBackoff: 20 * time.Millisecond}, nil)
	waitFor(t, proj, "appcut", appendDeposits(t, ctx, appender, 5).Position)

	holder, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock(4242)"); err != nil {
		t.Fatal(err)
	}
	held := faultDeposit(t, 7, false)
	heldErr := make(chan error, 1)
	go func() {
		_, err := appender.Append(ctx, "held", conduit.Any, held)
		heldErr <- err
	}()
	waitBlockedBy(t, ctx, pool, int(holder.Conn().PgConn().PID()))
	// Later appends commit behind the held one.
	after := appendDeposits(t, ctx, appender, 5)
	if n := terminate(t, pool, "$1 = ANY (pg_blocking_pids(pid))", int(holder.Conn().PgConn().PID())); n != 1 {
		t.Fatalf("terminated %d sessions, want the held appender's", n)
	}
	select {
	case err := <-heldErr:
		if err == nil {
			t.Fatal("the append whose connection was terminated succeeded")
		}
		t.Logf("append with its connection cut: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the append whose connection was terminated did not return")
	}
	// The rolled-back append does not stall the projector.
	waitFor(t, proj, "appcut", after.Position)
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock(4242)"); err != nil {
		t.Fatal(err)
	}
	// Its outcome was unknown to the appender: retry with the same id.
	res, err := appendRetry(ctx, appender, "held", held)
	if err != nil {
		t.Fatal(err)
	}
	if res.Duplicate {
		t.Fatal("the retried append reports a duplicate: the terminated append committed")
	}
	res, err = appendRetry(ctx, appender, "held", held)
	if err != nil || !res.Duplicate {
		t.Fatalf("second retry: %+v, %v; want a duplicate", res, err)
	}

	// Every connection of the appender, idle: appends retried go through.
	if n := terminate(t, pool, "application_name = 'fault-appender'"); n == 0 {
		t.Fatal("no appender session to terminate")
	}
	for i := range 10 {
		if res, err = appendRetry(ctx, appender, fmt.Sprintf("acct-%d", i%3), faultDeposit(t, int64(i), false)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, proj, "appcut", res.Position)
	waitFor(t, proj, "appcut", lastLogPosition(t, pool))
	if got := countEvents(t, ctx, pool, "held"); got != 1 {
		t.Fatalf("stream held has %d events, want 1", got)
	}
	checkFaultTables(t, proj, pool)
}

// TestProjectorConvergesWithoutNotifications: the appender sends no NOTIFY
// at all (another Store, DisableNotify); the projector finds everything by
// polling alone. A poll-only projector never listens, finds other stores'
// appends by polling, and is woken at once by its own store's appends.
func TestProjectorConvergesWithoutNotifications(t *testing.T) {
	t.Parallel()
	// setup gives a subtest its own database, a silent appender store and
	// a projector store.
	setup := func(t *testing.T) (silent, proj *conduit.Store, pool *pgxpool.Pool) {
		_, pool = newStore(t, nil)
		createFaultTables(t, pool)
		url := pool.Config().ConnString()
		silent, _ = openStore(t, url, "fault-silent", &conduit.Config{DisableNotify: true})
		proj, _ = openStore(t, url, "fault-projector", nil)
		return silent, proj, pool
	}

	t.Run("dropped", func(t *testing.T) {
		t.Parallel()
		silent, proj, pool := setup(t)
		ctx := testContext(t)
		startFaultProjector(t, proj, "dropped", "p1", conduit.ProjectorConfig{PollInterval: 50 * time.Millisecond}, nil)
		waitListenerReady(t, proj)
		for round := range 3 {
			var res conduit.AppendResult
			for i := range 10 {
				var err error
				if res, err = silent.Append(ctx, fmt.Sprintf("acct-%d", i%3), conduit.Any, faultDeposit(t, int64(i+round), false)); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, proj, "dropped", res.Position)
		}
		checkFaultTables(t, proj, pool)
	})

	t.Run("poll-only", func(t *testing.T) {
		t.Parallel()
		silent, proj, pool := setup(t)
		ctx := testContext(t)
		startFaultProjector(t, proj, "pollonly", "p1", conduit.ProjectorConfig{PollOnly: true, PollInterval: 50 * time.Millisecond}, nil)
		// Through another store that does notify: the poll-only projector
		// does not listen, so it finds these by polling.
		notifying, _ := openStore(t, pool.Config().ConnString(), "fault-notifying", nil)
		waitFor(t, proj, "pollonly", appendDeposits(t, ctx, silent, 10).Position)
		waitFor(t, proj, "pollonly", appendDeposits(t, ctx, notifying, 10).Position)
		if pid := conduit.ListenerPID(proj); pid != 0 {
			t.Fatalf("a poll-only projector started the listener (pid %d)", pid)
		}
		var listening int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND application_name = 'fault-projector' AND query ILIKE 'LISTEN%'`).Scan(&listening); err != nil {
			t.Fatal(err)
		}
		if listening != 0 {
			t.Fatalf("%d sessions of the poll-only store ran LISTEN", listening)
		}
		checkFaultTables(t, proj, pool)
	})

	t.Run("poll-only-in-process-wake", func(t *testing.T) {
		t.Parallel()
		_, proj, pool := setup(t)
		ctx := testContext(t)
		startFaultProjector(t, proj, "pollonly-wake", "p1", conduit.ProjectorConfig{PollOnly: true, PollInterval: 10 * time.Minute}, nil)
		for round := range 3 {
			if err := appendUntilApplied(ctx, proj, proj, "pollonly-wake", 30*time.Second); err != nil {
				t.Fatalf("round %d: a poll-only projector polling every 10 minutes was not woken by its own store's appends: %v", round, err)
			}
		}
		checkFaultTables(t, proj, pool)
	})
}

// TestProjectorThreeInstancesKillsAndPauses runs three instances of one
// projector in three processes while appends go on, and injects, in a random
// order: SIGKILL of the owner, SIGKILL of any instance, SIGSTOP of the owner
// between batches, SIGSTOP of the owner in the middle of a batch (rows
// written, not committed), and SIGSTOP of two successive owners, each paused
// for longer than the lease, then SIGCONT. Another instance must take over each time, and in the end every
// event is applied exactly once, in log order, under epochs that never
// decrease.
func TestProjectorThreeInstancesKillsAndPauses(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, nil)
	createFaultTables(t, pool)
	ctx := testContext(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CONDUIT_FAULT_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("CONDUIT_FAULT_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (set CONDUIT_FAULT_SEED to replay the order of the faults)", seed)
	rng := rand.New(rand.NewPCG(seed, seed))

	const (
		name  = "fenced"
		lease = time.Second
	)
	spec := helperSpec{URL: pool.Config().ConnString(), Projection: name, BatchSize: 20,
		LeaseDuration: lease, PollInterval: 200 * time.Millisecond}
	ids := []string{"inst-0", "inst-1", "inst-2"}
	var mu sync.Mutex // guards procs
	procs := map[string]*helperProc{}
	stalls := make(chan stallLine, 16)
	start := func(id string) {
		s := spec
		s.Instance = id
		h := startHelper(t, s)
		h.forwardStalls(stalls)
		mu.Lock()
		procs[id] = h
		mu.Unlock()
	}
	proc := func(id string) *helperProc {
		mu.Lock()
		defer mu.Unlock()
		return procs[id]
	}
	for _, id := range ids {
		start(id)
	}

	// Appends go on through all the faults: a deposit every 25 ms.
	actx, stopAppends := context.WithCancel(ctx)
	appendDone := make(chan error, 1)
	var appended atomic.Int64
	go func() {
		tick := time.NewTicker(25 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-actx.Done():
				appendDone <- nil
				return
			case <-tick.C:
			}
			// ctx, not actx: stopAppends ends the loop between appends and
			// must not cut one in flight. A cancelled append's outcome is
			// unknown: its statement may still commit after the last
			// progress check has read the log's last position, and the
			// instances, stopped by then, would not apply it.
			if _, err := appendRetry(ctx, store, fmt.Sprintf("acct-%d", i%5), faultDeposit(t, int64(i%7), false)); err != nil {
				appendDone <- err
				return
			}
			appended.Add(1)
		}
	}()
	defer stopAppends()

	owner := func(not string) string {
		var id string
		poll(t, 30*time.Second, "an instance other than "+not+" to hold the lease", func() bool {
			err := pool.QueryRow(ctx, `SELECT COALESCE(owner, '') FROM conduit.projections
				WHERE name = $1 AND lease_expires_at > now()`, name).Scan(&id)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				t.Fatal(err)
			}
			return id != "" && id != not
		})
		return id
	}
	progress := func(what string) {
		t.Helper()
		pos := lastLogPosition(t, pool)
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := store.WaitFor(wctx, name, pos); err != nil {
			st, _ := store.ProjectionStatus(ctx, name)
			t.Fatalf("after %s: no progress past %s: %v (status %+v)", what, pos, err, st)
		}
	}
	restart := func(id string) {
		h := proc(id)
		h.kill(t)
		start(id)
	}

	// The test's store made no Projector: WaitFor (in progress) knows the
	// projection once an instance has registered it.
	owner("")
	faults := []string{"kill-owner", "kill-any", "pause-idle", "pause-in-batch", "kill-owner", "pause-in-batch", "pause-two-owners"}
	rng.Shuffle(len(faults), func(i, j int) { faults[i], faults[j] = faults[j], faults[i] })
	for _, fault := range faults {
		progress("the previous fault")
		switch fault {
		case "kill-owner":
			id := owner("")
			t.Logf("%s: %s", fault, id)
			restart(id)
			owner("")
		case "kill-any":
			id := ids[rng.IntN(len(ids))]
			t.Logf("%s: %s", fault, id)
			restart(id)
			owner("")
		case "pause-idle":
			id := owner("")
			t.Logf("%s: %s", fault, id)
			h := proc(id)
			h.signal(t, syscall.SIGSTOP)
			owner(id) // a takeover: paused for longer than the lease
			h.signal(t, syscall.SIGCONT)
		case "pause-two-owners":
			// Pause the owner x until y takes over, then pause y too and let
			// events pile up while x resumes: x, believing it still holds
			// the lease, starts a batch with events to apply under its old
			// epoch, which the lease check in the batch must refuse.
			x := owner("")
			hx := proc(x)
			hx.signal(t, syscall.SIGSTOP)
			y := owner(x)
			hy := proc(y)
			hy.signal(t, syscall.SIGSTOP)
			t.Logf("%s: %s, then %s", fault, x, y)
			n := appended.Load()
			poll(t, 10*time.Second, "appends while both are paused", func() bool { return appended.Load() >= n+2 })
			hx.signal(t, syscall.SIGCONT)
			owner(y)
			hy.signal(t, syscall.SIGCONT)
		case "pause-in-batch":
			e := faultDeposit(t, 1, true)
			res, err := appendRetry(ctx, store, "stall", e)
			if err != nil {
				t.Fatal(err)
			}
			first := expectStall(t, stalls, e.ID, "")
			t.Logf("%s: %s", fault, first.instance)
			h := proc(first.instance)
			h.signal(t, syscall.SIGSTOP)
			// The paused batch's connection is cut after the lease (its idle
			// transaction times out); another instance takes over and applies
			// the same event, and is let through.
			second := expectStall(t, stalls, e.ID, first.instance)
			proc(second.instance).resume(t)
			progress("the takeover")
			if err := store.WaitFor(ctx, name, res.Position); err != nil {
				t.Fatal(err)
			}
			// The paused instance resumes in the middle of its stale batch.
			h.signal(t, syscall.SIGCONT)
			h.resume(t)
		}
	}
	stopAppends()
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	progress("the last append")
	for _, id := range ids {
		h := proc(id)
		h.stop(t)
	}
	epochs := checkFaultTables(t, store, pool)
	t.Logf("%d events appended besides the stall events; applied under epochs %v", appended.Load(), epochs)
	// Four faults at least move the lease: kill-owner twice and
	// pause-in-batch twice.
	if len(epochs) < 5 {
		t.Fatalf("applied under epochs %v: fewer takeovers than faults that force one", epochs)
	}
}
