package main

import (
	"context"
	"errors"
	"fmt"
	"log"
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
func (c *catchUp) onlineRebuild(ctx context.Context, out *results) error {
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
		reads    int
		shrank   string
		slowest  time.Duration
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
			begin := time.Now()
			if err := conn.QueryRow(runCtx, `SELECT COALESCE(sum(events), 0) FROM `+p.table).Scan(&total); err != nil {
				if runCtx.Err() == nil {
					errs[onlineWriters] = err
				}
				return
			}
			slowest = max(slowest, time.Since(begin))
			if total < last {
				shrank = fmt.Sprintf("the reader saw %d events counted after %d", total, last)
			}
			last = max(last, total)
			reads++
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
	log.Printf("online rebuild: %s, %d replayed at the swap (%.0f/s), %d appended meanwhile; reader: %d reads, slowest %s, %s",
		took.Round(time.Millisecond), replayed, float64(replayed)/took.Seconds(), appended.Load(), reads, slowest, seen)
	out.timings = append(out.timings, timingRow{
		name: fmt.Sprintf("online rebuild (shadow tables, swap) of the batch upsert projection over %s events, %d writers appending",
			rate(float64(c.events)), onlineWriters),
		events: int(replayed), elapsed: []time.Duration{took}})
	out.findings = append(out.findings, fmt.Sprintf(
		"Online rebuild: %d events appended by %d writers during it; a reader polling the read table's total "+
			"(%d reads) %s; its slowest read took %s (target: the swap blocks readers ≤ 100 ms).",
		appended.Load(), onlineWriters, reads, seen, ms(slowest)))
	c.head = head
	c.events = want
	return stop()
}
