package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/conduit-es/conduit"
)

// throughputResult holds the throughput runs' figures.
type throughputResult struct {
	relay, plain []float64 // messages per second, one per run
	// prebuilt: the plain loop publishing from the whole backlog built
	// beforehand (a diagnostic, not the target's baseline).
	prebuilt []float64
	// relayGOGC: the relay with the garbage collector's GOGC at
	// tunedGOGC (a diagnostic).
	relayGOGC []float64
	// Garbage collections per run: the relay's drain, the plain loop's, the
	// prebuilt loop's, the relay's at tunedGOGC.
	gcRelay, gcPlain, gcPrebuilt, gcRelayGOGC []float64
	// Per relay run: database statements per batch handed to the
	// publisher, and the share of the drain's time spent in Publish.
	statementsPerBatch, publishShare []float64
	// allocsPerMessage: the process's allocations per message during a
	// relay's drain.
	allocsPerMessage []float64
}

// tunedGOGC is the garbage collector's GOGC of the diagnostic relay run.
const tunedGOGC = 400

// benchThroughput times the relay draining a backlog of opts.messages into
// JetStream (Relay.Drain, BatchSize opts.batchSize, the conduitnats
// publisher with its defaults) against a plain loop publishing as many
// messages with the same publisher in batches of the same size, alternating
// the two (and, as a diagnostic, the plain loop publishing from the whole
// backlog built beforehand). Each run has a stream of its own.
func benchThroughput(ctx context.Context, e *env) (throughputResult, error) {
	var res throughputResult
	db, err := e.freshDB(ctx, "throughput")
	if err != nil {
		return res, err
	}
	defer db.drop()
	counter := &statementCounter{}
	store, closeStore, err := db.store(ctx, 4, counter, &conduit.Config{Logger: quietLogger()})
	if err != nil {
		return res, err
	}
	defer closeStore()

	// One untimed run of each, a tenth of the size, warms up both sides.
	for run := -1; run < e.opts.runs; run++ {
		n := e.opts.messages
		if run < 0 {
			n = max(n/10, e.opts.batchSize)
		}
		rate, stmts, share, gcRelay, allocs, err := relayRun(ctx, e, store, counter, n)
		if err != nil {
			return res, fmt.Errorf("relay run: %w", err)
		}
		plain, gcPlain, err := plainRun(ctx, e, n, false)
		if err != nil {
			return res, fmt.Errorf("plain run: %w", err)
		}
		prebuilt, gcPrebuilt, err := plainRun(ctx, e, n, true)
		if err != nil {
			return res, fmt.Errorf("plain run from the prebuilt backlog: %w", err)
		}
		old := debug.SetGCPercent(tunedGOGC)
		tuned, _, _, gcTuned, _, err := relayRun(ctx, e, store, counter, n)
		debug.SetGCPercent(old)
		if err != nil {
			return res, fmt.Errorf("relay run with GOGC=%d: %w", tunedGOGC, err)
		}
		if run < 0 {
			continue
		}
		log.Printf("  run %d: relay %.0f msg/s (%.1f statements per batch, %.0f%% in Publish, %d GCs), plain loop %.0f msg/s (%d GCs); from the prebuilt backlog %.0f (%d GCs); relay with GOGC=%d %.0f (%d GCs)",
			run+1, rate, stmts, 100*share, gcRelay, plain, gcPlain, prebuilt, gcPrebuilt, tunedGOGC, tuned, gcTuned)
		res.relayGOGC = append(res.relayGOGC, tuned)
		res.allocsPerMessage = append(res.allocsPerMessage, allocs)
		res.gcRelayGOGC = append(res.gcRelayGOGC, float64(gcTuned))
		res.relay = append(res.relay, rate)
		res.plain = append(res.plain, plain)
		res.prebuilt = append(res.prebuilt, prebuilt)
		res.gcRelay = append(res.gcRelay, float64(gcRelay))
		res.gcPlain = append(res.gcPlain, float64(gcPlain))
		res.gcPrebuilt = append(res.gcPrebuilt, float64(gcPrebuilt))
		res.statementsPerBatch = append(res.statementsPerBatch, stmts)
		res.publishShare = append(res.publishShare, share)
	}
	return res, nil
}

// relayRun enqueues n messages (untimed), then times a relay draining
// them into a fresh stream.
func relayRun(ctx context.Context, e *env, store *conduit.Store, counter *statementCounter, n int) (rate, stmtsPerBatch, publishShare float64, gcs uint32, allocsPerMessage float64, err error) {
	if err := enqueue(ctx, store, e.messages(0, n)); err != nil {
		return 0, 0, 0, 0, 0, err
	}
	// Untimed, what autovacuum would do by then: the drain is not
	// measured against a background analyze of the rows just written.
	if _, err := store.Pool().Exec(ctx, "VACUUM ANALYZE conduit.outbox"); err != nil {
		return 0, 0, 0, 0, 0, err
	}
	s, err := e.newStream(ctx)
	if err != nil {
		return 0, 0, 0, 0, 0, err
	}
	defer e.deleteStream(s)
	pub, err := e.publisher(s)
	if err != nil {
		return 0, 0, 0, 0, 0, err
	}
	timed := &timedPublisher{pub: pub}
	relay, err := conduit.NewRelay(store, timed, &conduit.RelayConfig{BatchSize: e.opts.batchSize, InstanceID: "relay-bench"})
	if err != nil {
		return 0, 0, 0, 0, 0, err
	}
	counter.reset()
	allocs, gcs := allocations(), gcCycles()
	start := time.Now()
	if err := relay.Drain(ctx); err != nil {
		return 0, 0, 0, 0, 0, err
	}
	elapsed := time.Since(start)
	allocs, gcs = allocations()-allocs, gcCycles()-gcs
	if err := checkStored(ctx, s, n); err != nil {
		return 0, 0, 0, 0, 0, err
	}
	calls := max(timed.calls.Load(), 1)
	stmts := counter.n.Load()
	if e.opts.verbose {
		for name, d := range counter.reset() {
			log.Printf("    %s: %s per batch", name, (d / time.Duration(calls)).Round(time.Microsecond))
		}
		log.Printf("    Publish: %s per batch", (time.Duration(timed.busy.Load()) / time.Duration(calls)).Round(time.Microsecond))
		log.Printf("    allocations: %.1f per message (the process's, during the drain)", float64(allocs)/float64(n))
	}
	return float64(n) / elapsed.Seconds(), float64(stmts) / float64(calls),
		float64(timed.busy.Load()) / float64(elapsed), gcs, float64(allocs) / float64(n), nil
}

// plainRun times the conduitnats publisher publishing n messages in
// batches of opts.batchSize into a fresh stream, each batch after the
// previous one is acknowledged: the relay's publishing without its
// database. Each batch's messages are made just before it is published, as
// a producer makes them, so the process holds a batch at a time, as the
// relay's does. With prebuilt, they are all made beforehand (untimed): the
// loop then holds the whole backlog, a heap that makes the garbage
// collector run far less often than in the relay's process (a diagnostic).
func plainRun(ctx context.Context, e *env, n int, prebuilt bool) (float64, uint32, error) {
	var backlog []conduit.Message
	if prebuilt {
		backlog = e.messages(0, n)
	}
	s, err := e.newStream(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer e.deleteStream(s)
	pub, err := e.publisher(s)
	if err != nil {
		return 0, 0, err
	}
	allocs, gcs := allocations(), gcCycles()
	start := time.Now()
	var batch []conduit.Message // made, not yet acknowledged
	for sent := 0; sent < n; {
		if len(batch) == 0 {
			k := min(n-sent, e.opts.batchSize)
			if prebuilt {
				batch = backlog[sent : sent+k]
			} else {
				batch = e.messages(sent, k)
			}
		}
		acked, err := pub.Publish(ctx, batch)
		if err != nil && acked == 0 {
			return 0, 0, err
		}
		batch, sent = batch[acked:], sent+acked // the rest again, as the relay would
	}
	elapsed := time.Since(start)
	allocs, gcs = allocations()-allocs, gcCycles()-gcs
	runtime.KeepAlive(backlog)
	if e.opts.verbose {
		log.Printf("    plain loop (prebuilt %v) allocations: %.1f per message", prebuilt, float64(allocs)/float64(n))
	}
	if err := checkStored(ctx, s, n); err != nil {
		return 0, 0, err
	}
	return float64(n) / elapsed.Seconds(), gcs, nil
}

// checkStored fails unless s holds n messages.
func checkStored(ctx context.Context, s *stream, n int) error {
	got, err := s.storedCount(ctx)
	if err != nil {
		return err
	}
	if got != uint64(n) {
		return fmt.Errorf("stream %s holds %d messages, want %d", s.name, got, n)
	}
	return nil
}

// timedPublisher counts the calls of pub and the time spent in them.
type timedPublisher struct {
	pub   conduit.Publisher
	calls atomic.Int64
	busy  atomic.Int64 // nanoseconds
}

func (p *timedPublisher) Publish(ctx context.Context, msgs []conduit.Message) (int, error) {
	start := time.Now()
	n, err := p.pub.Publish(ctx, msgs)
	p.busy.Add(int64(time.Since(start)))
	p.calls.Add(1)
	return n, err
}

// allocations returns how many heap objects the process has allocated.
func allocations() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Mallocs
}

// gcCycles returns how many garbage collections the process has completed.
func gcCycles() uint32 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.NumGC
}

// quietLogger logs warnings and errors only, to stderr.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type logWriter struct{}

func (logWriter) Write(b []byte) (int, error) {
	log.Print(string(b))
	return len(b), nil
}

var errTimeout = errors.New("timed out")
