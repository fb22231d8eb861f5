package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/conduit-es/conduit"
)

// onlineWriters append while the online rebuild runs.
const onlineWriters = 8

// onlineRebuild: a batch upsert projection over the shared log, caught up,
// rebuilt online (Store.RebuildProjectionOnline) while 8 writers append to
// the log in a closed loop and a reader polls the read table's total on
// its own connection. It reports the time from the call to the swap, the
// replay's rate, whether the reader ever saw the total go down (an empty
// or partial table), and the reader's slowest query (the swap's wait is in
// it). This runs last: it appends to the shared log.
func (c *catchUp) onlineRebuild(ctx context.Context, out *results, swaps *swapLog) error {
	p := newBenchProjection("online_batch_upsert", batchUpsertHandler)
	if err := p.prepare(ctx, c.pool); err != nil {
		return err
	}
	defer c.dropOld(ctx, p)
	pr, err := conduit.NewProjector(c.store, p.projection(), nil)
	if err != nil {
		return err
	}
	run, err := runProjector(ctx, pr)
	if err != nil {
		return err
	}
	stop := sync.OnceValue(run)
	defer func() { _ = stop() }() // on an early return; checked at the end
	if err := c.waitCaughtUp(ctx, p.name); err != nil {
		return err
	}

	db, err := c.srv.logDB(ctx)
	if err != nil {
		return err
	}
	wpool, err := db.pool(ctx, onlineWriters+2)
	if err != nil {
		return err
	}
	defer wpool.Close()
	wstore, err := conduit.NewStore(wpool, nil)
	if err != nil {
		return err
	}
	defer wstore.Close()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		appended atomic.Int64
		errs     = make([]error, onlineWriters+1)
		reads    []readerQuery
		shrank   string
	)
	for w := range onlineWriters {
		wg.Go(func() {
			// Stopped between appends, never in one: an append cancelled
			// in flight may still commit after the check below has read
			// the head.
			b := newAppendBatch("", w, 1)
			for i := int64(0); runCtx.Err() == nil; i++ {
				if errs[w] = b.next(); errs[w] != nil {
					return
				}
				if _, errs[w] = wstore.Append(ctx, fmt.Sprintf("online-w%d", w), conduit.Exactly(i), b.events...); errs[w] != nil {
					return
				}
				appended.Add(1)
			}
		})
	}
	wg.Go(func() {
		conn, err := wpool.Acquire(runCtx)
		if err != nil {
			errs[onlineWriters] = err
			return
		}
		defer conn.Release()
		var last int64
		for runCtx.Err() == nil {
			var total int64
			var table uint32 // the oid of the table read: the swap changes it
			begin := time.Now()
			if err := conn.QueryRow(runCtx, `SELECT COALESCE(sum(events), 0), COALESCE(min(tableoid), 0) FROM `+p.table).
				Scan(&total, &table); err != nil {
				if runCtx.Err() == nil {
					errs[onlineWriters] = err
				}
				return
			}
			reads = append(reads, readerQuery{begin: begin, took: time.Since(begin), table: table})
			if total < last {
				shrank = fmt.Sprintf("the reader saw %d events counted after %d", total, last)
			}
			last = max(last, total)
		}
	})

	begin := time.Now()
	if err := c.store.RebuildProjectionOnline(ctx, p.name); err != nil {
		return err
	}
	var replayed int64
	deadline := time.Now().Add(15 * time.Minute)
	for {
		st, err := c.store.ProjectionStatus(ctx, p.name)
		if err != nil {
			return err
		}
		if st.OnlineRebuild == nil {
			break
		}
		replayed = st.OnlineRebuild.Replayed
		if time.Now().After(deadline) {
			return fmt.Errorf("online rebuild not done after 15 minutes: %+v", *st.OnlineRebuild)
		}
		select { // polling the status: nothing signals the swap outside the projector
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	took := time.Since(begin)
	// The reader goes on for the window after the swap.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(swapWindow):
	}
	cancel()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// The read table counts every event once, the writers' included.
	head, err := c.store.Head(ctx)
	if err != nil {
		return err
	}
	if err := c.store.WaitFor(ctx, p.name, head); err != nil {
		return err
	}
	var want int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM conduit.events`).Scan(&want); err != nil {
		return err
	}
	if err := p.check(ctx, c.pool, want); err != nil {
		return err
	}
	seen := "never saw the total go down"
	if shrank != "" {
		seen = "**saw the total go down**: " + shrank
	}
	around, away, err := readerBlocks(reads)
	if err != nil {
		return err
	}
	timeouts, swapTook := swaps.result()
	log.Printf("online rebuild: %s, %d replayed at the swap (%.0f/s), %d appended meanwhile; reader: %d reads, %s; "+
		"around the swap %d reads, p99 %s, max %s; away from it p99 %s, max %s; the swap took %s (call to commit; readers wait only for the part from its lock request) after %d timed-out tries",
		took.Round(time.Millisecond), replayed, float64(replayed)/took.Seconds(), appended.Load(), len(reads), seen,
		around.reads, ms(around.p99), ms(around.max), ms(away.p99), ms(away.max), ms(swapTook), timeouts)
	out.readers = append(out.readers, around, away)
	out.timings = append(out.timings, timingRow{
		name: fmt.Sprintf("online rebuild (shadow tables, swap) of the batch upsert projection over %s events, %d writers appending",
			rate(float64(c.events)), onlineWriters),
		events: int(replayed), elapsed: []time.Duration{took}})
	out.findings = append(out.findings, fmt.Sprintf(
		"Online rebuild: %d events appended by %d writers during it; a reader polling the read table's total "+
			"(%d reads) %s. The swap took %s from its call to its commit (the projector's log; readers wait only for "+
			"the part from its lock request), after %d tries that gave up at the lock timeout.",
		appended.Load(), onlineWriters, len(reads), seen, ms(swapTook), timeouts))
	c.head = head
	c.events = want
	return stop()
}

// readerQuery is one query of the online rebuild's reader.
type readerQuery struct {
	begin time.Time
	took  time.Duration
	table uint32 // the read table's oid, as the query saw it
}

// swapWindow is how far around the swap the reader's queries count as
// "around the swap".
const swapWindow = time.Second

// readerRow is the reader's query times during an online rebuild.
type readerRow struct {
	name     string
	reads    int
	p50, p99 time.Duration
	max      time.Duration
	target   time.Duration // the most a query may take; 0: none
}

func (r readerRow) met() bool { return r.target == 0 || r.max <= r.target }

// readerBlocks sums up the reader's queries: those that began within
// swapWindow of the swap (the first query that saw the new table began
// after it, the one before it before it), with the target, and the others
// (the load's own noise, for contrast).
func readerBlocks(reads []readerQuery) (around, away readerRow, err error) {
	swap := -1
	for i := 1; i < len(reads); i++ {
		if reads[i].table != reads[i-1].table {
			swap = i
			break
		}
	}
	if swap < 0 {
		return around, away, errors.New("online rebuild: the reader never saw the table change")
	}
	from, to := reads[swap-1].begin.Add(-swapWindow), reads[swap].begin.Add(swapWindow)
	var near, far []time.Duration
	for _, q := range reads {
		if !q.begin.Before(from) && !q.begin.After(to) {
			near = append(near, q.took)
		} else {
			far = append(far, q.took)
		}
	}
	sum := func(name string, d []time.Duration, target time.Duration) readerRow {
		if len(d) == 0 {
			return readerRow{name: name, target: target}
		}
		slices.Sort(d)
		return readerRow{name: name, reads: len(d), p50: percentile(d, 0.5), p99: percentile(d, 0.99), max: d[len(d)-1], target: target}
	}
	return sum(fmt.Sprintf("around the swap (begun within %s of it)", swapWindow), near, swapBlockTarget),
		sum("away from the swap (the others: the load's own noise)", far, 0), nil
}

// swapBlockTarget is the bound on how long the swap may block a
// reader.
const swapBlockTarget = 100 * time.Millisecond

// swapLog is the online rebuild's store's log handler: it counts the swap's
// tries that timed out and keeps how long the swap took.
type swapLog struct {
	mu       sync.Mutex
	timeouts int
	took     time.Duration
}

func (*swapLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *swapLog) WithAttrs([]slog.Attr) slog.Handler     { return h }
func (h *swapLog) WithGroup(string) slog.Handler          { return h }

func (h *swapLog) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case strings.Contains(r.Message, "longer than its lock timeout"):
		h.timeouts++
	case strings.Contains(r.Message, "swapped in"):
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "swap" {
				h.took = a.Value.Duration()
			}
			return true
		})
	}
	return nil
}

func (h *swapLog) result() (timeouts int, took time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.timeouts, h.took
}
