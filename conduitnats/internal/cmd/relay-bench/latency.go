package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/conduit-es/conduit"
)

// latencyResult holds the latency runs' figures.
type latencyResult struct {
	rate     float64         // appends per second achieved, median
	samples  int             // messages received, all runs
	p50, p99 []time.Duration // one per run
	max      time.Duration   // over all runs
	// The longest a transaction with an id stayed open on the server
	// (any database) during the runs, sampled: the relay reads below the
	// oldest one (the horizon is the whole server's), so one open for a
	// second delays messages by up to that.
	longestTx time.Duration
}

// benchLatency appends single events at opts.latencyRate for
// opts.latencyRun, each turned into an outbox message by a Config.Outbox
// rule in the append's statement; a relay on a store of its own (another
// pool, woken by LISTEN, as a relay in another process would be) delivers
// them to JetStream, and an ordered consumer takes the time each arrives,
// minus the time its append started (carried in the payload).
func benchLatency(ctx context.Context, e *env) (res latencyResult, err error) {
	db, err := e.freshDB(ctx, "latency")
	if err != nil {
		return res, err
	}
	defer db.drop()
	appender, closeAppender, err := db.store(ctx, 4, nil, &conduit.Config{Logger: quietLogger(),
		Outbox: []conduit.OutboxRule{{EventType: "deposit_made", Topic: "deposits"}}})
	if err != nil {
		return res, err
	}
	defer closeAppender()
	relayStore, closeRelayStore, err := db.store(ctx, 4, nil, &conduit.Config{Logger: quietLogger()})
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
	// One relay and one consumer for every run, as in production: a relay
	// that has just started may miss wake-ups until it LISTENs, and then
	// finds messages at its next poll.
	stopRelay := runRelay(ctx, relay)
	defer func() {
		if err := stopRelay(); err != nil {
			log.Printf("relay: %v", err)
		}
	}()
	arrivals := &arrivals{by: map[int][]time.Duration{}, arrived: make(chan struct{}, 1)}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return res, err
	}
	cc, err := cons.Consume(arrivals.receive)
	if err != nil {
		return res, err
	}
	defer cc.Stop()

	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan time.Duration, 1)
	go func() { sampled <- sampleLongestTransaction(sctx, relayStore) }()
	defer func() {
		stopSampling()
		res.longestTx = <-sampled
	}()

	var rates []float64
	for run := -1; run < e.opts.runs; run++ {
		length := e.opts.latencyRun
		if run < 0 {
			length = time.Second // warm-up, untimed
		}
		rate, latencies, err := latencyRun(ctx, e, appender, arrivals, run, length)
		if err != nil {
			return res, err
		}
		if run < 0 {
			continue
		}
		p50, p99, top := percentile(latencies, 0.50), percentile(latencies, 0.99), slices.Max(latencies)
		log.Printf("  run %d: %d appends at %.0f/s: p50 %s, p99 %s, max %s", run+1, len(latencies), rate, p50, p99, top)
		res.p50, res.p99 = append(res.p50, p50), append(res.p99, p99)
		res.max = max(res.max, top)
		res.samples += len(latencies)
		rates = append(rates, rate)
	}
	res.rate = median(rates)
	return res, nil
}

// sampleLongestTransaction returns, once ctx ends, the longest a
// transaction with an id was seen open on the server, sampling every 50ms.
func sampleLongestTransaction(ctx context.Context, store *conduit.Store) time.Duration {
	var longest time.Duration
	for ctx.Err() == nil {
		var age time.Duration
		err := store.Pool().QueryRow(ctx, `
			SELECT coalesce(max(now() - xact_start), '0')
			  FROM pg_stat_activity
			 WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()`).Scan(&age)
		if err == nil {
			longest = max(longest, age)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	return longest
}

// payload is the data of a latency run's events.
type payload struct {
	Run   int   `json:"run"`
	Start int64 `json:"start"` // Unix nanoseconds, before the append
}

// arrivals collects the latencies of the messages a consumer receives, by
// run.
type arrivals struct {
	mu      sync.Mutex
	by      map[int][]time.Duration
	arrived chan struct{} // signalled after each arrival
}

func (a *arrivals) receive(m jetstream.Msg) {
	now := time.Now()
	var p payload
	if json.Unmarshal(m.Data(), &p) != nil {
		return
	}
	a.mu.Lock()
	a.by[p.Run] = append(a.by[p.Run], now.Sub(time.Unix(0, p.Start)))
	a.mu.Unlock()
	select {
	case a.arrived <- struct{}{}:
	default:
	}
}

func (a *arrivals) of(run int) []time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.by[run])
}

// latencyRun appends at opts.latencyRate for length, then waits for every
// message to arrive, and returns the rate achieved and the latencies.
func latencyRun(ctx context.Context, e *env, appender *conduit.Store, arr *arrivals, run int, length time.Duration) (float64, []time.Duration, error) {
	interval := time.Second / time.Duration(e.opts.latencyRate)
	start := time.Now()
	sent := 0
	for next := start; time.Since(start) < length; next = next.Add(interval) {
		time.Sleep(time.Until(next))
		ev, err := conduit.NewEvent("deposit_made", payload{Run: run, Start: time.Now().UnixNano()})
		if err != nil {
			return 0, nil, err
		}
		if _, err := appender.Append(ctx, "account-"+strconv.Itoa(sent%e.opts.keys), conduit.Any, ev); err != nil {
			return 0, nil, err
		}
		sent++
	}
	rate := float64(sent) / time.Since(start).Seconds()
	deadline := time.After(30 * time.Second)
	for {
		got := arr.of(run)
		if len(got) >= sent {
			return rate, got, nil
		}
		select {
		case <-arr.arrived:
		case <-deadline:
			return 0, nil, fmt.Errorf("%d of %d messages arrived within 30s: %w", len(got), sent, errTimeout)
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
	}
}

// percentile returns the q-quantile of ds (nearest rank).
func percentile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func median[T int64 | float64 | time.Duration](vs []T) T {
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
