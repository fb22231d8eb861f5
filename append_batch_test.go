package conduit_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// batchSetup lines appends up into one batch: a transaction holds the lock
// of stream "gate" (an AppendTx), an Append to "gate" goes alone and waits
// for it, and the appends started meanwhile queue behind it. Releasing the
// gate sends them together.
type batchSetup struct {
	t     *testing.T
	ctx   context.Context
	store *conduit.Store
	pool  *pgxpool.Pool
	gate  pgx.Tx
	gated chan error
}

type batchOutcome struct {
	res conduit.AppendResult
	err error
}

// queue starts an Append and waits until it is in the queue, so that the
// appends of a batch are in the order of the calls to queue.
func (b *batchSetup) queue(ctx context.Context, stream string, expected conduit.ExpectedVersion, events ...conduit.EventData) <-chan batchOutcome {
	b.t.Helper()
	out := make(chan batchOutcome, 1)
	n := conduit.QueuedAppends(b.store)
	go func() {
		res, err := b.store.Append(ctx, stream, expected, events...)
		out <- batchOutcome{res, err}
	}()
	for conduit.QueuedAppends(b.store) == n {
		select {
		case <-time.After(time.Millisecond):
		case <-b.ctx.Done():
			b.t.Fatal("the append never queued")
		}
	}
	return out
}

// open commits the gate's transaction: the gated append goes, then the
// queue as one batch.
func (b *batchSetup) open() {
	b.t.Helper()
	if err := b.gate.Commit(b.ctx); err != nil {
		b.t.Fatal(err)
	}
	if err := <-b.gated; err != nil {
		b.t.Fatal(err)
	}
}

// Batches mix appends that succeed, conflict, repeat stored events and
// follow one another on one stream: each caller gets its own result, the
// appends of a batch that wrote share one transaction, and outbox messages
// are enqueued for exactly those.
func TestAppendBatchMixedOutcomes(t *testing.T) {
	t.Parallel()
	rule := conduit.OutboxRule{EventType: "announced", Topic: "news"}
	store0, pool := newStore(t, nil)
	ctx := testContext(t)
	// Stored before the batch: stream "b" at 1, and the event a retry resends.
	stored := mustEvent(t, "announced", "stored")
	if _, err := store0.Append(ctx, "b", conduit.NoStream, stored); err != nil {
		t.Fatal(err)
	}

	b := newBatchSetupOn(t, pool, &conduit.Config{Outbox: []conduit.OutboxRule{rule}})
	okFresh := b.queue(ctx, "a", conduit.NoStream, mustEvent(t, "announced", "a1"))
	conflict := b.queue(ctx, "b", conduit.Exactly(0), mustEvent(t, "announced", "conflict"))
	retry := b.queue(ctx, "b", conduit.NoStream, stored)
	first := b.queue(ctx, "c", conduit.NoStream, mustEvent(t, "announced", "c1"), mustEvent(t, "x", "c2"))
	second := b.queue(ctx, "c", conduit.Exactly(2), mustEvent(t, "announced", "c3"))
	stale := b.queue(ctx, "c", conduit.Exactly(2), mustEvent(t, "announced", "stale"))
	anyV := b.queue(ctx, "b", conduit.Any, mustEvent(t, "x", "b2"))
	b.open()

	results := map[string]batchOutcome{}
	for name, c := range map[string]<-chan batchOutcome{"okFresh": okFresh, "conflict": conflict, "retry": retry,
		"first": first, "second": second, "stale": stale, "any": anyV} {
		results[name] = <-c
	}
	for _, name := range []string{"okFresh", "first", "second", "any"} {
		if results[name].err != nil {
			t.Fatalf("%s: %v", name, results[name].err)
		}
	}
	var vc *conduit.VersionConflictError
	// Refusals are explained after the batch, as after an append alone: the
	// actual version is the stream's then (1, or 2 after "any").
	if err := results["conflict"].err; !errors.As(err, &vc) || vc.Actual < 1 {
		t.Errorf("conflict: %v, want a version conflict at 1 or 2", err)
	}
	if err := results["stale"].err; !errors.As(err, &vc) || vc.Actual != 3 {
		t.Errorf("stale: %v, want a version conflict at 3 (after first and second)", err)
	}
	if r := results["retry"]; r.err != nil || !r.res.Duplicate || r.res.Version != 1 {
		t.Errorf("retry: %+v, %v; want the stored event, duplicate, at 1", r.res, r.err)
	}
	if v := results["first"].res.Version; v != 2 {
		t.Errorf("first: version %d, want 2", v)
	}
	if v := results["second"].res.Version; v != 3 {
		t.Errorf("second: version %d, want 3", v)
	}
	if v := results["any"].res.Version; v != 2 {
		t.Errorf("any: version %d, want 2", v)
	}
	// The first append to each stream went in one batch: one transaction,
	// positions in call order. Later appends to those streams went in the
	// next batches, in call order.
	tx := results["okFresh"].res.Position.TransactionID
	if p := results["first"].res.Position; p.TransactionID != tx || p.GlobalPosition <= results["okFresh"].res.Position.GlobalPosition {
		t.Errorf("first: at %v, okFresh at %v: want one transaction, first after okFresh", p, results["okFresh"].res.Position)
	}
	if p := results["second"].res.Position; p.TransactionID <= tx {
		t.Errorf("second: at %v, want after the first batch (transaction %d)", p, tx)
	}
	if n := countEvents(t, ctx, pool, ""); n != 1+2+1+2+1+1 { // stored, gate's two, a, c1-c3, b2
		t.Errorf("%d events stored, want 8", n)
	}
	// Messages of the appends that wrote only: a1, c1, c3 (store0 has no
	// rule).
	var topics int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM conduit.outbox").Scan(&topics); err != nil {
		t.Fatal(err)
	}
	if topics != 3 {
		t.Errorf("%d outbox messages, want 3", topics)
	}
}

// newBatchSetupOn is newBatchSetup on an existing database's pool.
func newBatchSetupOn(t *testing.T, pool *pgxpool.Pool, cfg *conduit.Config) *batchSetup {
	t.Helper()
	store, err := conduit.NewStore(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return gateStore(t, store, pool)
}

func gateStore(t *testing.T, store *conduit.Store, pool *pgxpool.Pool) *batchSetup {
	t.Helper()
	ctx := testContext(t)
	conduit.HoldAppendQueue(store)
	b := &batchSetup{t: t, ctx: ctx, store: store, pool: pool, gated: make(chan error, 1)}
	var err error
	if b.gate, err = pool.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.gate.Rollback(context.Background()) })
	if _, err := store.AppendTx(ctx, b.gate, "gate", conduit.Any, mustEvent(t, "held", 0)); err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := store.Append(ctx, "gate", conduit.Any, mustEvent(t, "gated", 0))
		b.gated <- err
	}()
	waitBlockedBy(t, ctx, pool, backendPID(t, ctx, b.gate))
	return b
}

// An event id stored in another stream fails the batch's transaction on
// the unique index: nothing of the batch commits, and each append is sent
// alone, so each caller still gets its own answer.
func TestAppendBatchUniqueViolationRetriedAlone(t *testing.T) {
	t.Parallel()
	store0, pool := newStore(t, nil)
	ctx := testContext(t)
	taken := mustEvent(t, "e", "taken")
	if _, err := store0.Append(ctx, "elsewhere", conduit.NoStream, taken); err != nil {
		t.Fatal(err)
	}
	b := newBatchSetupOn(t, pool, nil)
	ok1 := b.queue(ctx, "s1", conduit.NoStream, mustEvent(t, "e", 1))
	reuse := b.queue(ctx, "s2", conduit.NoStream, taken) // NoStream: the batch does not look the id up
	ok2 := b.queue(ctx, "s3", conduit.NoStream, mustEvent(t, "e", 3))
	b.open()
	for name, c := range map[string]<-chan batchOutcome{"ok1": ok1, "ok2": ok2} {
		if r := <-c; r.err != nil || r.res.Version != 1 {
			t.Errorf("%s: %+v, %v; want version 1", name, r.res, r.err)
		}
	}
	var dup *conduit.DuplicateEventIDError
	if r := <-reuse; !errors.As(r.err, &dup) || dup.StreamID != "elsewhere" {
		t.Errorf("reuse: %v, want a duplicate event id in stream elsewhere", r.err)
	}
	if n := countEvents(t, ctx, pool, "s2"); n != 0 {
		t.Errorf("s2 has %d events, want 0", n)
	}
}

// A connection killed while its batch is in flight leaves every caller with
// the "outcome unknown" class; resending the same events stores each once.
func TestAppendBatchConnectionKilled(t *testing.T) {
	t.Parallel()
	store0, pool := newStore(t, nil)
	ctx := testContext(t)
	// A second transaction holds stream "blocker": the batch waits for it
	// once sent, and is killed there.
	blocker, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx) //nolint:errcheck
	if _, err := store0.AppendTx(ctx, blocker, "blocker", conduit.Any, mustEvent(t, "held", 0)); err != nil {
		t.Fatal(err)
	}

	b := newBatchSetupOn(t, pool, nil)
	type call struct {
		stream   string
		expected conduit.ExpectedVersion
		events   []conduit.EventData
		out      <-chan batchOutcome
	}
	var calls []*call
	for i := range 6 {
		c := &call{stream: fmt.Sprintf("s%d", i), events: []conduit.EventData{mustEvent(t, "e", i)}, expected: conduit.Any}
		if i == 3 {
			c.stream = "blocker"
		}
		calls = append(calls, c)
		c.out = b.queue(ctx, c.stream, c.expected, c.events...)
	}
	b.open()
	blockerPID := backendPID(t, ctx, blocker)
	waitBlockedBy(t, ctx, pool, blockerPID)
	if n := terminate(t, pool, "$1 = ANY (pg_blocking_pids(pid)) AND query LIKE '%append_batch%'", blockerPID); n != 1 {
		t.Fatalf("terminated %d sessions, want the batch's", n)
	}
	for i, c := range calls {
		r := <-c.out
		if r.err == nil {
			t.Errorf("call %d: succeeded, its batch's connection was killed before commit", i)
			continue
		}
		if !conduit.IsOutcomeUnknown(r.err) || conduit.IsRefused(r.err) {
			t.Errorf("call %d: %v; want outcome unknown", i, r.err)
		}
	}
	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// Resend, twice: each event is stored once.
	for range 2 {
		for i, c := range calls {
			if _, err := b.store.Append(ctx, c.stream, c.expected, c.events...); err != nil {
				t.Fatalf("resend %d: %v", i, err)
			}
		}
	}
	for i, c := range calls {
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM conduit.events WHERE event_id = $1", c.events[0].ID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("call %d: event stored %d times, want once", i, n)
		}
	}
}

// An append whose context ends while it waits in the queue returns the
// context's error and is never sent.
func TestAppendBatchQueuedContextEnds(t *testing.T) {
	t.Parallel()
	_, pool := newStore(t, nil)
	b := newBatchSetupOn(t, pool, nil)
	ctx, cancel := context.WithCancel(b.ctx)
	kept := b.queue(b.ctx, "kept", conduit.NoStream, mustEvent(t, "e", 1))
	gone := b.queue(ctx, "gone", conduit.NoStream, mustEvent(t, "e", 2))
	kept2 := b.queue(b.ctx, "kept", conduit.Exactly(1), mustEvent(t, "e", 3))
	cancel()
	r := <-gone
	if !errors.Is(r.err, context.Canceled) {
		t.Errorf("gone: %v, want context.Canceled", r.err)
	}
	b.open()
	for name, c := range map[string]<-chan batchOutcome{"kept": kept, "kept2": kept2} {
		if r := <-c; r.err != nil {
			t.Errorf("%s: %v", name, r.err)
		}
	}
	if n := countEvents(t, b.ctx, pool, "gone"); n != 0 {
		t.Errorf("the cancelled append stored %d events", n)
	}
	if n := countEvents(t, b.ctx, pool, "kept"); n != 2 {
		t.Errorf("kept has %d events, want 2", n)
	}
}

// Writers in a closed loop (each appends again as soon as its append
// returns) fill their batches: the next batch waits for the callers of the
// last one instead of sending the first of them alone and the others in a
// batch behind it.
func TestAppendBatchClosedLoopFillsBatches(t *testing.T) {
	store, _ := newStore(t, nil)
	ctx := testContext(t)
	const writers, appends = 8, 150
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for v := range int64(appends) {
				if _, err := store.Append(ctx, fmt.Sprintf("loop-%d", w), conduit.Exactly(v), mustEvent(t, "ticked", v)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	sends, sent := conduit.AppendSends(store)
	if sent != writers*appends {
		t.Fatalf("sends carried %d appends, want %d", sent, writers*appends)
	}
	perSend := float64(sent) / float64(sends)
	t.Logf("%d appends in %d sends: %.1f per send", sent, sends, perSend)
	// Without the wait: about 4.5 (half the sends alone).
	if perSend < 5.5 {
		t.Errorf("%.1f appends per send with %d writers in a closed loop, want at least 5.5", perSend, writers)
	}
}

// A batch of single-event appends without outbox messages (sent with
// conduit.append_batch_one) mixes outcomes too: each caller gets its own
// result, and those that wrote share one transaction, in call order.
func TestAppendBatchSingleEventsMixedOutcomes(t *testing.T) {
	t.Parallel()
	store0, pool := newStore(t, nil)
	ctx := testContext(t)
	stored := mustEvent(t, "e", "stored")
	if _, err := store0.Append(ctx, "b", conduit.NoStream, stored); err != nil {
		t.Fatal(err)
	}
	if _, err := store0.Append(ctx, "c", conduit.NoStream, mustEvent(t, "e", "c1")); err != nil {
		t.Fatal(err)
	}

	b := newBatchSetupOn(t, pool, nil)
	fresh := b.queue(ctx, "a", conduit.NoStream, mustEvent(t, "e", "a1"))
	conflict := b.queue(ctx, "b", conduit.Exactly(0), mustEvent(t, "e", "conflict"))
	anyV := b.queue(ctx, "c", conduit.Any, mustEvent(t, "e", "c2"))
	retry := b.queue(ctx, "d", conduit.Any, stored) // stored in "b": a reused id
	exists := b.queue(ctx, "e", conduit.StreamExists, mustEvent(t, "e", "e1"))
	exact := b.queue(ctx, "f", conduit.Exactly(0), mustEvent(t, "e", "f1"))
	b.open()

	r := map[string]batchOutcome{"fresh": <-fresh, "conflict": <-conflict, "any": <-anyV, "retry": <-retry,
		"exists": <-exists, "exact": <-exact}
	for _, name := range []string{"fresh", "any", "exact"} {
		if r[name].err != nil {
			t.Fatalf("%s: %v", name, r[name].err)
		}
	}
	var vc *conduit.VersionConflictError
	if err := r["conflict"].err; !errors.As(err, &vc) || vc.Actual != 1 {
		t.Errorf("conflict: %v, want a version conflict at 1", err)
	}
	if err := r["exists"].err; !errors.As(err, &vc) || vc.Actual != 0 {
		t.Errorf("exists: %v, want a version conflict at 0", err)
	}
	var de *conduit.DuplicateEventIDError
	if err := r["retry"].err; !errors.As(err, &de) || de.StreamID != "b" || de.Version != 1 {
		t.Errorf("retry: %v, want a duplicate event id stored at b@1", err)
	}
	if v := r["fresh"].res.Version; v != 1 {
		t.Errorf("fresh: version %d, want 1", v)
	}
	if v := r["any"].res.Version; v != 2 {
		t.Errorf("any: version %d, want 2", v)
	}
	if v := r["exact"].res.Version; v != 1 {
		t.Errorf("exact: version %d, want 1", v)
	}
	f, a, e := r["fresh"].res.Position, r["any"].res.Position, r["exact"].res.Position
	if f.TransactionID != a.TransactionID || a.TransactionID != e.TransactionID ||
		f.GlobalPosition >= a.GlobalPosition || a.GlobalPosition >= e.GlobalPosition {
		t.Errorf("fresh at %v, any at %v, exact at %v: want one transaction, in call order", f, a, e)
	}
	if n := countEvents(t, ctx, pool, ""); n != 2+2+3 { // stored, c1, gate's two, a1, c2, f1
		t.Errorf("%d events stored, want 7", n)
	}
}

// A batch of single-event appends some of which enqueue outbox messages
// (sent with conduit.append_batch_one_outbox): each caller gets its own
// result, and the messages of the appends written, only those, are
// enqueued in the batch's transaction, in call order.
func TestAppendBatchSingleEventsOutboxMixedOutcomes(t *testing.T) {
	t.Parallel()
	cfg := &conduit.Config{Outbox: []conduit.OutboxRule{{EventType: "paid", Topic: "orders.paid"}}}
	store0, pool := newStore(t, cfg)
	ctx := testContext(t)
	if _, err := store0.Append(ctx, "b", conduit.NoStream, mustEvent(t, "e", "b1")); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "TRUNCATE conduit.outbox"); err != nil {
		t.Fatal(err)
	}

	b := newBatchSetupOn(t, pool, cfg)
	a := b.queue(ctx, "a", conduit.NoStream, mustEvent(t, "paid", "a"))
	refused := b.queue(ctx, "b", conduit.Exactly(0), mustEvent(t, "paid", "refused")) // b is at 1
	plain := b.queue(ctx, "c", conduit.NoStream, mustEvent(t, "e", "c1"))             // no message
	d := b.queue(ctx, "d", conduit.Any, mustEvent(t, "paid", "d"))
	b.open()

	ra, rr, rc, rd := <-a, <-refused, <-plain, <-d
	for name, o := range map[string]batchOutcome{"a": ra, "c": rc, "d": rd} {
		if o.err != nil || o.res.Version != 1 {
			t.Fatalf("%s: %+v, want version 1", name, o)
		}
	}
	var vc *conduit.VersionConflictError
	if !errors.As(rr.err, &vc) || vc.Actual != 1 {
		t.Errorf("refused: %v, want a version conflict at 1", rr.err)
	}
	if ra.res.Position.TransactionID != rd.res.Position.TransactionID {
		t.Errorf("a at %v, d at %v: want one transaction", ra.res.Position, rd.res.Position)
	}
	// Each message is its event's (the rule's default: the event's id, the
	// stream as key).
	rows, err := pool.Query(ctx, `SELECT e.stream_id, o.topic, o.key, o.transaction_id::text::bigint
		FROM conduit.outbox o LEFT JOIN conduit.events e ON e.event_id = o.message_id ORDER BY o.position`)
	if err != nil {
		t.Fatal(err)
	}
	type msg struct {
		stream, topic, key string
		tx                 int64
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (msg, error) {
		var m msg
		var stream *string
		err := r.Scan(&stream, &m.topic, &m.key, &m.tx)
		if stream != nil {
			m.stream = *stream
		}
		return m, err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []msg{
		{"a", "orders.paid", "a", int64(ra.res.Position.TransactionID)},
		{"d", "orders.paid", "d", int64(rd.res.Position.TransactionID)},
	}
	if !slices.Equal(got, want) {
		t.Errorf("outbox holds %+v, want %+v", got, want)
	}
	if sends, _ := conduit.AppendSends(b.store); sends == 0 {
		t.Error("no batch was sent")
	}
}
