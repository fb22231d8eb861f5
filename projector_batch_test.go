package conduit_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// batchLedger is the ledger as a BatchProjection: one INSERT per batch,
// from arrays. fail, if set, fails the whole call when it fails on any of
// the call's events, as a statement of the batch would.
type batchLedger struct {
	ledger
	mu    sync.Mutex
	calls [][]uuid.UUID // the events of each ApplyBatch call
}

func (l *batchLedger) ApplyBatch(ctx context.Context, tx pgx.Tx, events []conduit.Event) error {
	ids := make([]uuid.UUID, len(events))
	for i, e := range events {
		ids[i] = e.ID
	}
	l.mu.Lock()
	l.calls = append(l.calls, ids)
	l.mu.Unlock()
	var (
		streams          []string
		versions, txs, p []int64
	)
	for _, e := range events {
		if l.fail != nil {
			if err := l.fail(e); err != nil {
				return err
			}
		}
		streams = append(streams, e.StreamID)
		versions = append(versions, e.StreamVersion)
		txs = append(txs, int64(e.Position.TransactionID))
		p = append(p, e.Position.GlobalPosition)
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+ledgerTable+` (event_id, stream_id, stream_version, transaction_id, global_position)
		SELECT a, b, c, d, e FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) WITH ORDINALITY AS u(a, b, c, d, e, n)
		 ORDER BY n`, ids, streams, versions, txs, p)
	return err
}

func (l *batchLedger) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	return l.ApplyBatch(ctx, tx, []conduit.Event{e})
}

// callsOf returns the ApplyBatch calls made so far.
func (l *batchLedger) callsOf() [][]uuid.UUID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.calls)
}

// poisonedLog appends 5 events, a "bad" one, then 4 more: 10 in all.
func poisonedLog(t *testing.T, store *conduit.Store, pool *pgxpool.Pool) (bad uuid.UUID, all []uuid.UUID) {
	t.Helper()
	appendN(t, store, "a", 5)
	if _, err := store.Append(context.Background(), "poison", conduit.NoStream, mustEvent(t, "bad", 1)); err != nil {
		t.Fatal(err)
	}
	appendN(t, store, "b", 4)
	// The tests expect the whole log in the projector's first batch: wait
	// until all of it is below the safe horizon, which transactions of
	// other tests on the server may hold back for a moment.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var above int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM conduit.events
			WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())`).Scan(&above); err != nil {
			t.Fatal(err)
		}
		if above == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events still above the safe horizon after 30s", above)
		}
		time.Sleep(10 * time.Millisecond)
	}
	rows, err := pool.Query(context.Background(), `SELECT event_id, event_type = 'bad' FROM conduit.events ORDER BY transaction_id, global_position`)
	if err != nil {
		t.Fatal(err)
	}
	var (
		id    uuid.UUID
		isBad bool
	)
	if _, err := pgx.ForEachRow(rows, []any{&id, &isBad}, func() error {
		all = append(all, id)
		if isBad {
			bad = id
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return bad, all
}

// A batch handler gets the whole batch in one call. When it fails, the
// batch is rolled back and its events applied one at a time: the failing
// one is retried alone and parked; the others commit, each exactly once.
func TestBatchProjectionIsolatesPoisonEventAndParks(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	bad, all := poisonedLog(t, store, pool)
	l := &batchLedger{ledger: ledger{name: "ledger", fail: func(e conduit.Event) error {
		if e.Type == "bad" {
			return errBoom
		}
		return nil
	}}}
	p := newProjector(t, store, l, &conduit.ProjectorConfig{
		Poison: conduit.PoisonPark, MaxAttempts: 3, RetryBackoff: time.Millisecond, BatchSize: 100,
	})
	if err := p.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	calls := l.callsOf()
	if len(calls) == 0 || !slices.Equal(calls[0], all) {
		t.Fatalf("first ApplyBatch call had %v, want the whole log %v", calls[0], all)
	}
	alone := 0
	for _, c := range calls[1:] {
		if len(c) != 1 {
			t.Fatalf("after the failed batch, ApplyBatch was called with %d events, want one at a time", len(c))
		}
		if c[0] == bad {
			alone++
		}
	}
	if alone != 3 {
		t.Fatalf("the bad event was tried alone %d times, want MaxAttempts (3)", alone)
	}
	checkLedgerHasAllBut(t, pool, all, bad)
	parked, err := store.ParkedEvents(ctx, "ledger")
	if err != nil || len(parked) != 1 || parked[0].EventID != bad || parked[0].Attempts != 3 {
		t.Fatalf("parked = %+v, %v; want the bad event after 3 attempts", parked, err)
	}
	st, err := store.ProjectionStatus(ctx, "ledger")
	if err != nil || st.LagEvents != 0 || st.EventsApplied != 9 || st.FailedAttempts != 0 {
		t.Fatalf("status = %+v, %v; want caught up with 9 events applied and no failure left", st, err)
	}
}

// Under PoisonStop the events before the failing one commit, the
// checkpoint stops just before it, and nothing after it is applied. Once
// the handler is fixed the rest goes through, each event exactly once.
func TestBatchProjectionIsolatesPoisonEventAndStalls(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	bad, all := poisonedLog(t, store, pool)
	var mu sync.Mutex
	broken := true
	l := &batchLedger{ledger: ledger{name: "ledger", fail: func(e conduit.Event) error {
		mu.Lock()
		defer mu.Unlock()
		if e.Type == "bad" && broken {
			return errBoom
		}
		return nil
	}}}
	cfg := &conduit.ProjectorConfig{MaxAttempts: 2, RetryBackoff: time.Millisecond, BatchSize: 100, StalledRetryInterval: time.Hour}
	err := newProjector(t, store, l, cfg).CatchUp(ctx)
	checkStalledError(t, err, "ledger", bad)
	rows := readLedger(t, pool)
	if len(rows) != 5 {
		t.Fatalf("ledger has %d rows, want the 5 events before the bad one", len(rows))
	}
	for i, r := range rows {
		if r.EventID != all[i].String() {
			t.Fatalf("ledger row %d is %s, want %s", i, r.EventID, all[i])
		}
	}
	st, err := store.ProjectionStatus(ctx, "ledger")
	if err != nil || st.State != conduit.StateStalled || st.StalledEventID != bad || st.LagEvents != 5 ||
		st.Checkpoint.GlobalPosition != rows[4].GlobalPosition {
		t.Fatalf("status = %+v, %v; want stalled at the bad event, checkpoint at the event before it", st, err)
	}

	mu.Lock()
	broken = false
	mu.Unlock()
	if err := newProjector(t, store, l, cfg).CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	checkLedgerMatchesLog(t, store, pool)
}

// A batch that fails only as a whole (here: any call of more than one
// event that includes a "bad" one) goes through one event at a time: no
// event is to blame, none is parked or counted.
func TestBatchProjectionFailingOnlyWhole(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	_, _ = poisonedLog(t, store, pool)
	l := &batchLedger{}
	l.name = "ledger"
	l.fail = func(e conduit.Event) error {
		if e.Type == "bad" && len(l.calls[len(l.calls)-1]) > 1 { // the call ApplyBatch just recorded, on this goroutine
			return errBoom
		}
		return nil
	}
	if err := newProjector(t, store, l, &conduit.ProjectorConfig{Poison: conduit.PoisonPark, MaxAttempts: 1, BatchSize: 100}).CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	checkLedgerMatchesLog(t, store, pool)
	if parked, err := store.ParkedEvents(ctx, "ledger"); err != nil || len(parked) != 0 {
		t.Fatalf("parked = %+v, %v; want none", parked, err)
	}
	// Later batches are applied whole again. (One append: its three events
	// pass below the safe horizon together, whatever transactions other
	// tests hold open on the server.)
	res, err := store.Append(ctx, "c", conduit.Any, mustEvent(t, "tick", 0), mustEvent(t, "tick", 1), mustEvent(t, "tick", 2))
	if err != nil {
		t.Fatal(err)
	}
	if err := newProjector(t, store, l, nil).CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	calls := l.callsOf()
	if last := calls[len(calls)-1]; len(last) != 3 {
		t.Fatalf("the batch after the isolated one had %d events in one call, want 3", len(last))
	}
	waitFor(t, store, "ledger", res.Position)
	checkLedgerMatchesLog(t, store, pool)
}

// checkLedgerHasAllBut asserts the ledger applied every event of all but
// skip, each once, in order.
func checkLedgerHasAllBut(t *testing.T, pool *pgxpool.Pool, all []uuid.UUID, skip uuid.UUID) {
	t.Helper()
	var want []string
	for _, id := range all {
		if id != skip {
			want = append(want, id.String())
		}
	}
	var got []string
	for _, r := range readLedger(t, pool) {
		got = append(got, r.EventID)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("ledger has %v, want %v", got, want)
	}
}

// A Router's OnWrite handlers queue their statements, sent together in
// event order before an On handler runs. A statement that fails (here a
// CHECK violation) fails the batch; the event at fault is isolated and
// parked, and every other event is applied once.
func TestRouterOnWriteIsolatesPoisonEvent(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	if _, err := pool.Exec(ctx, `CREATE TABLE public.balances (account text PRIMARY KEY, amount bigint NOT NULL CHECK (amount >= 0));
		CREATE TABLE public.audits (seen bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	type deposited struct {
		Account string
		Amount  int64
	}
	r := conduit.NewRouter("balances", "public.balances", "public.audits")
	conduit.OnWrite(r, "deposited", func(_ context.Context, e conduit.Event, d deposited, b *pgx.Batch) error {
		b.Queue(`INSERT INTO public.balances AS t VALUES ($1, $2)
			ON CONFLICT (account) DO UPDATE SET amount = t.amount + EXCLUDED.amount`, d.Account, d.Amount)
		return nil
	})
	conduit.On(r, "audited", func(ctx context.Context, tx pgx.Tx, e conduit.Event, _ struct{}) error {
		_, err := tx.Exec(ctx, `INSERT INTO public.audits SELECT sum(amount) FROM public.balances`)
		return err
	})
	var poison uuid.UUID
	for _, d := range []deposited{{"a", 5}, {"b", 3}, {"a", -100}, {"a", 1}, {}, {"b", 2}} {
		ev := mustEvent(t, "deposited", d)
		if d.Account == "" {
			ev = mustEvent(t, "audited", struct{}{})
		}
		res, err := store.Append(ctx, "ledger-"+d.Account, conduit.Any, ev)
		if err != nil {
			t.Fatal(err)
		}
		if d.Amount < 0 {
			poison = eventIDAt(t, store, "ledger-a", res.Version)
		}
	}
	p := newProjector(t, store, r, &conduit.ProjectorConfig{Poison: conduit.PoisonPark, MaxAttempts: 2, RetryBackoff: time.Millisecond})
	if err := p.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	var a, b, seen int64
	if err := pool.QueryRow(ctx, `SELECT (SELECT amount FROM public.balances WHERE account = 'a'),
		(SELECT amount FROM public.balances WHERE account = 'b'), (SELECT seen FROM public.audits)`).Scan(&a, &b, &seen); err != nil {
		t.Fatal(err)
	}
	// The audit ran after the three good deposits before it were written.
	if a != 6 || b != 5 || seen != 9 {
		t.Fatalf("balances a=%d b=%d, audit saw %d; want 6, 5 and 9", a, b, seen)
	}
	parked, err := store.ParkedEvents(ctx, "balances")
	if err != nil || len(parked) != 1 || parked[0].EventID != poison {
		t.Fatalf("parked = %+v, %v; want the overdraft alone", parked, err)
	}
}
