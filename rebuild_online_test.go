package conduit_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/conduit-es/conduit"
)

// An online rebuild under concurrent appends and a concurrent reader: the
// reader never sees the table shrink (no empty or partial table), the
// shadow copy is swapped in, and the final table is what an ordinary
// rebuild makes: every event once, in log order.
func TestRebuildProjectionOnlineUnderLoad(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	seed := appendN(t, store, "seed", 300)
	runProjector(t, newProjector(t, store, &ledger{name: "ledger"}, &conduit.ProjectorConfig{BatchSize: 500}))
	waitFor(t, store, "ledger", seed.Position)
	var before uint32
	if err := pool.QueryRow(ctx, `SELECT 'public.ledger'::regclass::oid`).Scan(&before); err != nil {
		t.Fatal(err)
	}

	// A reader polls the table's size throughout.
	readerCtx, stopReader := context.WithCancel(ctx)
	defer stopReader()
	var (
		readerErr   error
		shrank      string
		reads, last int
		readerDone  = make(chan struct{})
	)
	go func() {
		defer close(readerDone)
		for readerCtx.Err() == nil {
			var n int
			if err := pool.QueryRow(readerCtx, `SELECT count(*) FROM public.ledger`).Scan(&n); err != nil {
				if readerCtx.Err() == nil {
					readerErr = err
				}
				return
			}
			if n < last {
				shrank = "the reader saw " + strconv.Itoa(n) + " rows after " + strconv.Itoa(last)
				return
			}
			last = n
			reads++
		}
	}()

	// Writers append throughout.
	stopWriters := make(chan struct{})
	var wg sync.WaitGroup
	writerErrs := make([]error, 4)
	for w := range writerErrs {
		wg.Go(func() {
			pace := time.NewTicker(2 * time.Millisecond) // at most 500 appends/s each
			defer pace.Stop()
			for i := 0; ; i++ {
				select {
				case <-stopWriters:
					return
				case <-pace.C:
				}
				if _, err := store.Append(ctx, "w"+strconv.Itoa(w), conduit.Any, mustEvent(t, "tick", map[string]int{"n": i})); err != nil {
					writerErrs[w] = err
					return
				}
			}
		})
	}

	if err := store.RebuildProjectionOnline(ctx, "ledger"); err != nil {
		t.Fatal(err)
	}
	st, err := store.ProjectionStatus(ctx, "ledger")
	if err != nil || st.OnlineRebuild == nil {
		t.Fatalf("status right after the call = %+v, %v; want an online rebuild under way", st, err)
	}
	// Wait for the swap, polling the status.
	deadline := time.Now().Add(time.Minute)
	for {
		st, err = store.ProjectionStatus(ctx, "ledger")
		if err != nil {
			t.Fatal(err)
		}
		if st.OnlineRebuild == nil {
			break
		}
		if st.OnlineRebuild.Error != "" || time.Now().After(deadline) {
			t.Fatalf("online rebuild did not finish: %+v", *st.OnlineRebuild)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition with no signal
	}
	close(stopWriters)
	wg.Wait()
	if err := errors.Join(writerErrs...); err != nil {
		t.Fatal(err)
	}
	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, "ledger", head)
	stopReader()
	<-readerDone
	if readerErr != nil || shrank != "" || reads == 0 {
		t.Fatalf("reader: %v %s (%d reads)", readerErr, shrank, reads)
	}

	var after uint32
	var shadows int
	if err := pool.QueryRow(ctx, `SELECT 'public.ledger'::regclass::oid,
		(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'conduit_shadow')`).
		Scan(&after, &shadows); err != nil {
		t.Fatal(err)
	}
	if after == before || shadows != 0 {
		t.Fatalf("public.ledger oid %d → %d, %d relations left in conduit_shadow; want a new table and none left", before, after, shadows)
	}
	checkLedgerMatchesLog(t, store, pool)
}
