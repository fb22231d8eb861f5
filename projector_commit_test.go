package conduit_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/dbgen"
)

// A batch ends with its checkpoint and its COMMIT in one round trip. When
// the lease was taken from the instance while the batch applied (a takeover
// its keeper has not noticed yet), the checkpoint's save must fail and the
// COMMIT after it must not run: none of the batch's writes may commit.
func TestProjectorLeaseTakenMidBatchCommitsNothing(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	last := appendN(t, store, "s", 10)
	// All ten in the first batch: with a transaction of a parallel test
	// holding the horizon back, the first batch could hold only the events
	// below it, and commit them legitimately before the takeover.
	waitHorizon(t, ctx, pool, last.Position.TransactionID)
	var taken atomic.Bool
	l := &ledger{name: "ledger", fail: func(e conduit.Event) error {
		if e.StreamVersion == 5 && taken.CompareAndSwap(false, true) {
			// Another connection takes the lease over, as an instance would
			// once this one's lease ran out.
			_, err := pool.Exec(context.Background(), `UPDATE conduit.projections
				SET owner = 'thief', epoch = epoch + 1, lease_expires_at = now() + interval '1 hour' WHERE name = 'ledger'`)
			return err
		}
		return nil
	}}
	// A long lease: its keeper renews it every 10s, long after the batch ends,
	// so that the checkpoint's save is the one to find the lease gone.
	runProjector(t, newProjector(t, store, l, &conduit.ProjectorConfig{BatchSize: 100, LeaseDuration: 30 * time.Second}))
	poll(t, 30*time.Second, "the lease to be taken mid-batch", taken.Load)
	waitNoTransaction(t, pool)
	if rows := readLedger(t, pool); len(rows) != 0 {
		t.Fatalf("the ledger holds %d rows of a batch whose lease was taken before it committed", len(rows))
	}
	st, err := store.ProjectionStatus(ctx, "ledger")
	if err != nil {
		t.Fatal(err)
	}
	if st.Owner != "thief" || st.Checkpoint != (conduit.Position{}) {
		t.Fatalf("status %+v: want the thief's lease and no checkpoint", st)
	}
}

// waitNoTransaction waits until no other session of pool's database is in a
// transaction.
func waitNoTransaction(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	poll(t, 30*time.Second, "every transaction on the database to end", func() bool {
		var n int
		err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL`).Scan(&n)
		return err == nil && n == 0
	})
}

// Catching up, a batch that is followed at once by another begins the
// next one's transaction in the round trip of its commit; the events are
// applied once each, in order, and no transaction is left open when the
// projector stops.
func TestProjectorBatchBegunWithPreviousCommit(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendStreams(t, store, 10, 50)
	p := newProjector(t, store, &ledger{name: "begun"}, &conduit.ProjectorConfig{BatchSize: 7})
	if err := p.CatchUp(testContext(t)); err != nil {
		t.Fatal(err)
	}
	checkLedgerMatchesLog(t, store, pool)
	if n := conduit.BegunBatches(p); n == 0 {
		t.Error("no batch ran in a transaction begun by the previous batch's commit")
	}
	waitNoTransaction(t, pool)
}

// On a pool of one connection, an append may be waiting for the one a
// projector's batch holds: the projector gives it back after each batch
// instead of beginning the next batch's transaction on it.
func TestProjectorTinyPoolBeginsNothingAhead(t *testing.T) {
	t.Parallel()
	pool := openPool(t, newPool(t), 1)
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	createLedger(t, pool)
	appendStreams(t, store, 5, 50)
	p := newProjector(t, store, &ledger{name: "tiny"}, &conduit.ProjectorConfig{BatchSize: 7})
	if err := p.CatchUp(testContext(t)); err != nil {
		t.Fatal(err)
	}
	checkLedgerMatchesLog(t, store, pool)
	if n := conduit.BegunBatches(p); n != 0 {
		t.Errorf("%d batches kept the pool's only connection for the next batch", n)
	}
}

// counter is a projection that writes nothing and counts what it applied.
type counter struct {
	name    string
	applied atomic.Int64
	onApply func()
}

func (c *counter) Name() string { return c.name }

func (c *counter) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	if c.onApply != nil {
		c.onApply()
	}
	c.applied.Add(1)
	return nil
}

// Two projectors catching up on a budget of one connection take turns: a
// projector keeps its connection for its next batch only while no other
// batch waits for the budget.
func TestProjectorsTakeTurnsOnOneConnection(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, &conduit.Config{MaxProjectorConns: 1})
	const events = 500
	appendStreams(t, store, 10, events/10)
	a := &counter{name: "a"}
	aDoneAtB := atomic.Int64{}
	aDoneAtB.Store(-1)
	b := &counter{name: "b"}
	b.onApply = func() { aDoneAtB.CompareAndSwap(-1, a.applied.Load()) }
	pa := newProjector(t, store, a, &conduit.ProjectorConfig{BatchSize: 5})
	pb := newProjector(t, store, b, &conduit.ProjectorConfig{BatchSize: 5})
	errs := make(chan error, 2)
	go func() { errs <- pa.CatchUp(ctx) }()
	poll(t, 30*time.Second, "a to start applying", func() bool { return a.applied.Load() > 0 })
	go func() { errs <- pb.CatchUp(ctx) }()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if a.applied.Load() != events || b.applied.Load() != events {
		t.Fatalf("applied %d and %d events, want %d each", a.applied.Load(), b.applied.Load(), events)
	}
	if n := aDoneAtB.Load(); n < 0 || n >= events {
		t.Fatalf("b applied its first event when a had applied %d of %d: b waited for a to finish", n, events)
	}
}

// The checkpoint's save looks for an event after the checkpoint by the
// log's index, also in the generic plan PostgreSQL caches for a prepared
// statement after a few runs (pgx prepares it): written as EXISTS, that plan
// was a sequential scan from the log's first event, so every batch of a
// caught-up projector read the whole log (1s a batch at 3 million events),
// and an online rebuild's swap, waiting for the batches' table locks, never
// found a gap.
func TestCheckpointSaveGenericPlanUsesIndex(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, pool := newStore(t, nil)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, sql := range []string{
		largeLog, `ANALYZE conduit.events`,
		`SET plan_cache_mode = force_generic_plan`,
		`PREPARE save AS ` + dbgen.ProjectionCheckpointSaveSQL,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	rows, err := conn.Query(ctx, `EXPLAIN EXECUTE save('p', '5', 1, 30, 0, true, false, 'o', 1)`, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	if strings.Contains(plan, "Seq Scan on events") || !strings.Contains(plan, "events_global_order") {
		t.Fatalf("the generic plan of the checkpoint's save does not find the next event by the log's index:\n%s", plan)
	}
}
