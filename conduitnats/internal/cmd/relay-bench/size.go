package main

import (
	"context"
	"fmt"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// Size run settings.
const (
	sizeWriters       = 4
	sizeTxMessages    = 100    // messages per enqueue (one transaction)
	sizeMaxBacklog    = 50_000 // writers wait while more are pending
	sizeSampleEvery   = 500 * time.Millisecond
	sizeSettleAtLeast = 2 * time.Second  // after catching up, for the relay's next retires,
	sizeSettleAtMost  = 15 * time.Second // until only the current generation has rows
)

// outboxSize is the outbox's size at one moment.
type outboxSize struct {
	total       int64    // conduit.outbox_status().table_bytes
	partitions  [3]int64 // pg_total_relation_size of conduit.outbox_g0..g2 (heap, indexes, TOAST)
	indexes     [3]int64 // pg_indexes_size of each
	rows        int64    // rows in conduit.outbox
	currentRows int64    // of which in the current generation
}

// sizeResult holds the size run's figures.
type sizeResult struct {
	messages                int
	elapsed                 time.Duration // enqueueing
	before, after, settled  outboxSize
	peak                    int64 // largest total sampled
	maxPending              int64 // largest backlog sampled
	switches                int   // generation switches sampled
	generations             int   // current generation at the end
	caughtUp                time.Duration
	settleTime              time.Duration // from catching up to the "settled" measure
	rowsPerGeneration       int
	pendingAfter, delivered int64
	longestTx               time.Duration // see latencyResult.longestTx
}

// benchSize enqueues opts.sizeMessages messages from sizeWriters writers
// while a relay delivers them into JetStream, the writers held back while
// the backlog exceeds sizeMaxBacklog (the relay keeps up), and reports the
// outbox's size on disk before, at its sampled peak, once the relay caught
// up, and once it has retired what it delivered.
func benchSize(ctx context.Context, e *env) (sizeResult, error) {
	res := sizeResult{messages: e.opts.sizeMessages, rowsPerGeneration: conduit.RowsPerGenerationDefault}
	db, err := e.freshDB(ctx, "size")
	if err != nil {
		return res, err
	}
	defer db.drop()
	writers, closeWriters, err := db.store(ctx, sizeWriters+1, nil, &conduit.Config{Logger: quietLogger()})
	if err != nil {
		return res, err
	}
	defer closeWriters()
	counter := &statementCounter{}
	relayStore, closeRelayStore, err := db.store(ctx, 4, counter, &conduit.Config{Logger: quietLogger()})
	if err != nil {
		return res, err
	}
	defer closeRelayStore()
	s, err := e.newStream(ctx)
	if err != nil {
		return res, err
	}
	defer e.deleteStream(s)
	pub, err := e.publisher(s)
	if err != nil {
		return res, err
	}
	relay, err := conduit.NewRelay(relayStore, pub, &conduit.RelayConfig{InstanceID: "relay-bench"})
	if err != nil {
		return res, err
	}
	if res.before, err = measureSize(ctx, writers.Pool()); err != nil {
		return res, err
	}

	stopRelay := runRelay(ctx, relay)
	defer func() {
		if err := stopRelay(); err != nil {
			log.Printf("relay: %v", err)
		}
	}()

	tctx, stopTxSampling := context.WithCancel(ctx)
	longest := make(chan time.Duration, 1)
	go func() { longest <- sampleLongestTransaction(tctx, relayStore) }()
	defer func() {
		if stopTxSampling != nil {
			stopTxSampling()
			<-longest
		}
	}()

	// The sampler: the backlog the writers look at, the peak size, the
	// generation switches.
	var pending atomic.Int64
	sctx, stopSampler := context.WithCancel(ctx)
	var samplerErr error
	samplerDone := make(chan struct{})
	stopSampling := func() error { stopSampler(); <-samplerDone; return samplerErr }
	defer func() { _ = stopSampling() }()
	go func() {
		defer close(samplerDone)
		gen := -1
		for {
			st, err := writers.OutboxStatus(sctx)
			if sctx.Err() != nil {
				return
			}
			if err != nil {
				samplerErr = err
				return
			}
			pending.Store(st.Pending)
			res.peak = max(res.peak, st.TableBytes)
			res.maxPending = max(res.maxPending, st.Pending)
			if gen >= 0 && st.Generation != gen {
				res.switches++
			}
			gen = st.Generation
			res.generations = gen
			select {
			case <-sctx.Done():
			case <-time.After(sizeSampleEvery):
			}
		}
	}()

	var (
		next  atomic.Int64 // messages claimed by the writers
		wg    sync.WaitGroup
		errMu sync.Mutex
		werr  error
	)
	start := time.Now()
	for range sizeWriters {
		wg.Go(func() {
			for next.Add(sizeTxMessages) <= int64(res.messages) {
				for pending.Load() > sizeMaxBacklog && ctx.Err() == nil {
					time.Sleep(5 * time.Millisecond)
				}
				if err := writers.Enqueue(ctx, e.messages(0, sizeTxMessages)...); err != nil {
					errMu.Lock()
					werr = err
					errMu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	if werr != nil {
		return res, werr
	}
	res.messages = res.messages / sizeTxMessages * sizeTxMessages
	log.Printf("  enqueued %d messages in %s", res.messages, res.elapsed.Round(time.Millisecond))

	deadline := time.Now().Add(5 * time.Minute)
	for {
		st, err := writers.OutboxStatus(ctx)
		if err != nil {
			return res, err
		}
		if st.Pending == 0 {
			res.caughtUp = time.Since(start)
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("the relay has %d messages pending 5 minutes after the writers stopped: %w", st.Pending, errTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if res.after, err = measureSize(ctx, writers.Pool()); err != nil {
		return res, err
	}
	// The relay retires at most once a second, and idle every few seconds:
	// wait for it to have switched away from a full generation and
	// truncated every delivered one. Polled by sizes, not by counting rows:
	// a long read of the outbox keeps the relay's retire (which never waits
	// for a lock) from truncating.
	settle := time.Now()
	for time.Since(settle) < sizeSettleAtMost {
		time.Sleep(500 * time.Millisecond)
		retired, err := isRetired(ctx, writers.Pool(), res.before, int64(res.rowsPerGeneration))
		if err != nil {
			return res, err
		}
		if retired && time.Since(settle) >= sizeSettleAtLeast {
			break
		}
	}
	if res.settled, err = measureSize(ctx, writers.Pool()); err != nil {
		return res, err
	}
	res.settleTime = time.Since(settle)
	if e.opts.verbose {
		log.Printf("  the relay's statements, time by name: %v", counter.reset())
	}
	if err := stopSampling(); err != nil {
		return res, err
	}
	stopTxSampling()
	res.longestTx, stopTxSampling = <-longest, nil
	st, err := writers.OutboxStatus(ctx)
	if err != nil {
		return res, err
	}
	res.pendingAfter, res.delivered = st.Pending, st.Delivered
	if err := checkStored(ctx, s, res.messages); err != nil {
		return res, err
	}
	return res, nil
}

// isRetired reports whether every generation but the current one is as
// small as when empty (before) and the current one holds fewer rows than
// rowsPerGeneration (by the position sequence: no switch is due).
func isRetired(ctx context.Context, pool *pgxpool.Pool, before outboxSize, rowsPerGeneration int64) (bool, error) {
	var current int
	var sinceSwitch int64
	if err := pool.QueryRow(ctx, `
		SELECT g.current, s.last_value - g.switched_position
		  FROM conduit.outbox_generation g, conduit.outbox_position_seq s`).Scan(&current, &sinceSwitch); err != nil {
		return false, err
	}
	if sinceSwitch >= rowsPerGeneration {
		return false, nil
	}
	for g := range 3 {
		if g == current {
			continue
		}
		var size int64
		if err := pool.QueryRow(ctx, "SELECT pg_total_relation_size($1::regclass)", fmt.Sprintf("conduit.outbox_g%d", g)).Scan(&size); err != nil {
			return false, err
		}
		if size > before.partitions[g] {
			return false, nil
		}
	}
	return true, nil
}

// measureSize reads the outbox's size.
func measureSize(ctx context.Context, pool *pgxpool.Pool) (outboxSize, error) {
	var sz outboxSize
	if err := pool.QueryRow(ctx, "SELECT table_bytes FROM conduit.outbox_status()").Scan(&sz.total); err != nil {
		return sz, err
	}
	for g := range 3 {
		rel := fmt.Sprintf("conduit.outbox_g%d", g)
		if err := pool.QueryRow(ctx, "SELECT pg_total_relation_size($1::regclass), pg_indexes_size($1::regclass)", rel).
			Scan(&sz.partitions[g], &sz.indexes[g]); err != nil {
			return sz, err
		}
	}
	err := pool.QueryRow(ctx, `
		SELECT count(*), count(*) FILTER (WHERE o.generation = g.current)
		  FROM conduit.outbox o, conduit.outbox_generation g`).Scan(&sz.rows, &sz.currentRows)
	return sz, err
}
