package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/conduit-es/conduit"
)

// throughputResult holds the throughput runs' figures.
type throughputResult struct {
	relay, plain []float64 // messages per second, one per run
	// Per relay run: database statements per batch handed to the
	// publisher, and the share of the drain's time spent in Publish.
	statementsPerBatch, publishShare []float64
}

// benchThroughput times the relay draining a backlog of opts.messages into
// JetStream (Relay.Drain, BatchSize opts.batchSize, the conduitnats
// publisher with its defaults) against a plain loop publishing as many
// messages with the same publisher in batches of the same size, alternating
// the two. Each run has a stream of its own.
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
		rate, stmts, share, err := relayRun(ctx, e, store, counter, n)
		if err != nil {
			return res, fmt.Errorf("relay run: %w", err)
		}
		plain, err := plainRun(ctx, e, n)
		if err != nil {
			return res, fmt.Errorf("plain run: %w", err)
		}
		if run < 0 {
			continue
		}
		log.Printf("  run %d: relay %.0f msg/s (%.1f statements per batch, %.0f%% in Publish), plain loop %.0f msg/s",
			run+1, rate, stmts, 100*share, plain)
		res.relay = append(res.relay, rate)
		res.plain = append(res.plain, plain)
		res.statementsPerBatch = append(res.statementsPerBatch, stmts)
		res.publishShare = append(res.publishShare, share)
	}
	return res, nil
}

// relayRun enqueues n messages (untimed), then times a relay draining
// them into a fresh stream.
func relayRun(ctx context.Context, e *env, store *conduit.Store, counter *statementCounter, n int) (rate, stmtsPerBatch, publishShare float64, err error) {
	if err := enqueue(ctx, store, e.messages(n)); err != nil {
		return 0, 0, 0, err
	}
	// Untimed, what autovacuum would do by then: the drain is not
	// measured against a background analyze of the rows just written.
	if _, err := store.Pool().Exec(ctx, "VACUUM ANALYZE conduit.outbox"); err != nil {
		return 0, 0, 0, err
	}
	s, err := e.newStream(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	defer e.deleteStream(s)
	pub, err := e.publisher(s)
	if err != nil {
		return 0, 0, 0, err
	}
	timed := &timedPublisher{pub: pub}
	relay, err := conduit.NewRelay(store, timed, &conduit.RelayConfig{BatchSize: e.opts.batchSize, InstanceID: "relay-bench"})
	if err != nil {
		return 0, 0, 0, err
	}
	counter.reset()
	allocs := allocations()
	start := time.Now()
	if err := relay.Drain(ctx); err != nil {
		return 0, 0, 0, err
	}
	elapsed := time.Since(start)
	allocs = allocations() - allocs
	if err := checkStored(ctx, s, n); err != nil {
		return 0, 0, 0, err
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
		float64(timed.busy.Load()) / float64(elapsed), nil
}

// plainRun times the conduitnats publisher publishing n messages in
// batches of opts.batchSize into a fresh stream, each batch after the
// previous one is acknowledged: the relay's publishing without its
// database.
func plainRun(ctx context.Context, e *env, n int) (float64, error) {
	msgs := e.messages(n)
	s, err := e.newStream(ctx)
	if err != nil {
		return 0, err
	}
	defer e.deleteStream(s)
	pub, err := e.publisher(s)
	if err != nil {
		return 0, err
	}
	allocs := allocations()
	start := time.Now()
	for len(msgs) > 0 {
		batch := msgs[:min(len(msgs), e.opts.batchSize)]
		acked, err := pub.Publish(ctx, batch)
		if err != nil && acked == 0 {
			return 0, err
		}
		msgs = msgs[acked:] // the rest again, as the relay would
	}
	elapsed := time.Since(start)
	if e.opts.verbose {
		log.Printf("    plain loop allocations: %.1f per message", float64(allocations()-allocs)/float64(n))
	}
	if err := checkStored(ctx, s, n); err != nil {
		return 0, err
	}
	return float64(n) / elapsed.Seconds(), nil
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
