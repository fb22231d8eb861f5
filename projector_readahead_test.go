package conduit_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
)

// appendStreams appends n events to each of streams, ten per append.
func appendStreams(t testing.TB, store *conduit.Store, streams, n int) conduit.AppendResult {
	t.Helper()
	var res conduit.AppendResult
	for s := range streams {
		for v := 0; v < n; v += 10 {
			events := make([]conduit.EventData, 0, 10)
			for i := v; i < min(v+10, n); i++ {
				events = append(events, mustEvent(t, "tick", map[string]int{"n": i}))
			}
			var err error
			if res, err = store.Append(context.Background(), fmt.Sprintf("ra-%d", s), conduit.Any, events...); err != nil {
				t.Fatal(err)
			}
		}
	}
	return res
}

// TestProjectorReadAhead: catching up over many full batches, batches take
// events read ahead while the previous one committed, and every event is
// applied once, in log order.
func TestProjectorReadAhead(t *testing.T) {
	store, pool := newStore(t, &conduit.Config{MaxProjectorConns: 2}) // one for the batch, one to read ahead
	createLedger(t, pool)
	appendStreams(t, store, 10, 50)
	p, err := conduit.NewProjector(store, &ledger{name: "ra"}, &conduit.ProjectorConfig{BatchSize: 7})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CatchUp(testContext(t)); err != nil {
		t.Fatal(err)
	}
	checkLedgerMatchesLog(t, store, pool)
	if n := conduit.ReadAheadBatches(p); n == 0 {
		t.Error("no batch took events read ahead")
	}
}

// TestProjectorReadAheadTwoStatements: with a budget of three connections
// a projector catching up reads ahead with two statements at once, the
// second skipping the first's events; every event is applied once, in log
// order.
func TestProjectorReadAheadTwoStatements(t *testing.T) {
	store, pool := newStore(t, &conduit.Config{MaxProjectorConns: 3}) // the batch, and two to read ahead
	createLedger(t, pool)
	appendStreams(t, store, 10, 50)
	p, err := conduit.NewProjector(store, &ledger{name: "ra2"}, &conduit.ProjectorConfig{BatchSize: 5})
	if err != nil {
		t.Fatal(err)
	}
	conduit.SetReadAheadEvents(p, 20)
	if err := p.CatchUp(testContext(t)); err != nil {
		t.Fatal(err)
	}
	checkLedgerMatchesLog(t, store, pool)
	if n := conduit.ReadAheadSecondStatements(p); n == 0 {
		t.Error("no read-ahead statement ran beside another")
	}
}

// TestProjectorReadAheadTwoStatementsLateCommits: two read-ahead statements
// at once, each below its own safe horizon, while writers append and
// transactions that began before others commit after them: every event is
// applied once, in log order, none skipped at the seam of two statements.
func TestProjectorReadAheadTwoStatementsLateCommits(t *testing.T) {
	store, pool := newStore(t, &conduit.Config{MaxProjectorConns: 3})
	createLedger(t, pool)
	ctx := testContext(t)
	appendStreams(t, store, 4, 50)
	p, err := conduit.NewProjector(store, &ledger{name: "ra2late"}, &conduit.ProjectorConfig{BatchSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	conduit.SetReadAheadEvents(p, 9)
	stop := runProjector(t, p)
	defer stop()

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 60 {
				// Every fifth append holds its transaction open while the
				// others commit, then commits: a late commit.
				if i%5 == 0 {
					tx, err := pool.Begin(ctx)
					if err != nil {
						errs <- err
						return
					}
					if _, err := store.AppendTx(ctx, tx, fmt.Sprintf("late-%d", w), conduit.Any,
						mustEvent(t, "tick", map[string]int{"n": i})); err != nil {
						errs <- err
						return
					}
					time.Sleep(3 * time.Millisecond)
					if err := tx.Commit(ctx); err != nil {
						errs <- err
						return
					}
					continue
				}
				if _, err := store.Append(ctx, fmt.Sprintf("w-%d", w), conduit.Any,
					mustEvent(t, "tick", map[string]int{"n": i}), mustEvent(t, "tick", map[string]int{"n": i})); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.WaitFor(ctx, "ra2late", head); err != nil {
		t.Fatal(err)
	}
	stop()
	checkLedgerMatchesLog(t, store, pool)
	if n := conduit.ReadAheadSecondStatements(p); n == 0 {
		t.Error("no read-ahead statement ran beside another")
	}
}

// TestProjectorReadAheadPoisonEvent: a batch that fails on an event rolls
// back, so the events read ahead after it start past the checkpoint: they
// are dropped, the events before the poison one are committed, it is
// parked, and the rest applied once each, in order.
func TestProjectorReadAheadPoisonEvent(t *testing.T) {
	store, pool := newStore(t, &conduit.Config{MaxProjectorConns: 2}) // one for the batch, one to read ahead
	createLedger(t, pool)
	appendStreams(t, store, 4, 100)
	// The log in order (not ReadAll: it stops at the cluster's safe horizon,
	// which other tests' transactions may hold back).
	rows, err := pool.Query(testContext(t), `SELECT event_id FROM conduit.events ORDER BY transaction_id, global_position`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	events := make([]conduit.Event, len(ids))
	for i, id := range ids {
		events[i].ID = id
	}
	poison := events[233] // in the middle of a batch, read ahead
	p, err := conduit.NewProjector(store, &ledger{name: "ra_poison", fail: func(e conduit.Event) error {
		if e.ID == poison.ID {
			return errors.New("poison")
		}
		return nil
	}}, &conduit.ProjectorConfig{BatchSize: 10, Poison: conduit.PoisonPark, MaxAttempts: 2, RetryBackoff: 1e6})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.CatchUp(testContext(t)); err != nil {
		t.Fatal(err)
	}
	got := readLedger(t, pool)
	if len(got) != len(events)-1 {
		t.Fatalf("ledger has %d rows, want %d", len(got), len(events)-1)
	}
	for i, j := 0, 0; i < len(events); i++ {
		if events[i].ID == poison.ID {
			continue
		}
		if got[j].EventID != events[i].ID.String() {
			t.Fatalf("ledger row %d is %s, want %s", j, got[j].EventID, events[i].ID)
		}
		j++
	}
	parked, err := store.ParkedEvents(testContext(t), "ra_poison")
	if err != nil {
		t.Fatal(err)
	}
	if len(parked) != 1 || parked[0].EventID != poison.ID {
		t.Fatalf("parked %+v, want the poison event", parked)
	}
	if conduit.ReadAheadBatches(p) == 0 {
		t.Error("no batch took events read ahead")
	}
}

// TestProjectorReadAheadRebuild: a rebuild in the middle of a catch-up
// resets the checkpoint, so the events read ahead no longer follow it: they
// are dropped, and the replay applies every event once.
func TestProjectorReadAheadRebuild(t *testing.T) {
	store, pool := newStore(t, &conduit.Config{MaxProjectorConns: 2}) // one for the batch, one to read ahead
	createLedger(t, pool)
	head := appendStreams(t, store, 4, 100)
	var (
		once    sync.Once
		rebuilt = make(chan error, 1)
		applied int
	)
	p, err := conduit.NewProjector(store, &ledger{name: "ra_rebuild", fail: func(conduit.Event) error {
		applied++
		if applied == 150 { // mid-batch: the rebuild waits for its commit
			once.Do(func() {
				go func() { rebuilt <- store.RebuildProjection(context.Background(), "ra_rebuild") }()
			})
		}
		return nil
	}}, &conduit.ProjectorConfig{BatchSize: 10})
	if err != nil {
		t.Fatal(err)
	}
	stop := runProjector(t, p)
	if err := <-rebuilt; err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, "ra_rebuild", head.Position)
	stop()
	checkLedgerMatchesLog(t, store, pool)
	if applied < 400+150 {
		t.Errorf("applied %d events: the rebuild did not replay", applied)
	}
}
