package main

import (
	"context"
	"fmt"
	"log"
	"runtime/pprof"
	"slices"
	"sync"
	"time"
)

// sample is one timed run.
type sample struct {
	rate     float64       // events per second
	p50, p99 time.Duration // per-operation latency; zero where not measured
	// CPU time per event, in µs, of this process and of the server (zero
	// when the server is not on this machine); see cpu.go.
	clientCPU, serverCPU float64
}

// stats summarises the runs of one variant by their medians.
type stats struct {
	runs                 []sample
	rate                 float64
	p50, p99             time.Duration
	clientCPU, serverCPU float64 // µs per event
}

func summarize(runs []sample) stats {
	s := stats{runs: runs}
	s.rate = median(runs, func(x sample) float64 { return x.rate })
	s.p50 = time.Duration(median(runs, func(x sample) float64 { return float64(x.p50) }))
	s.p99 = time.Duration(median(runs, func(x sample) float64 { return float64(x.p99) }))
	s.clientCPU = median(runs, func(x sample) float64 { return x.clientCPU })
	s.serverCPU = median(runs, func(x sample) float64 { return x.serverCPU })
	return s
}

func median(runs []sample, f func(sample) float64) float64 {
	if len(runs) == 0 {
		return 0
	}
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = f(r)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// variant is one way of doing a workload's unit of work: Conduit, the raw
// baseline, or a diagnostic.
type variant struct {
	name string
	// start prepares a run (streams, ids) and returns one operation per
	// worker. An operation does one unit of work (one append, one full
	// read) and returns the number of events it wrote or read.
	start func(ctx context.Context, run string, workers int) ([]func(context.Context) (int, error), error)
}

// timedRun runs every worker's operation in a loop for d (at least once) and
// returns the throughput and the per-operation latency percentiles.
func timedRun(ctx context.Context, ops []func(context.Context) (int, error), d time.Duration) (sample, error) {
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		latencies []time.Duration
		events    int
		firstErr  error
	)
	cpu := markCPU()
	begin := time.Now()
	deadline := begin.Add(d)
	for _, op := range ops {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 4096)
			n := 0
			var err error
			// At least one operation, so that d = 0 means "once".
			for t0 := time.Now(); ctx.Err() == nil; {
				var k int
				if k, err = op(ctx); err != nil {
					break
				}
				t1 := time.Now()
				lat = append(lat, t1.Sub(t0))
				n += k
				t0 = t1
				if !t1.Before(deadline) {
					break
				}
			}
			mu.Lock()
			defer mu.Unlock()
			latencies = append(latencies, lat...)
			events += n
			if err != nil && firstErr == nil {
				firstErr = err
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(begin)
	client, server := cpu.since()
	if firstErr != nil {
		return sample{}, firstErr
	}
	if err := ctx.Err(); err != nil {
		return sample{}, err
	}
	slices.Sort(latencies)
	s := sample{
		rate: float64(events) / elapsed.Seconds(),
		p50:  percentile(latencies, 0.50),
		p99:  percentile(latencies, 0.99),
	}
	if events > 0 {
		s.clientCPU = float64(client.Microseconds()) / float64(events)
		s.serverCPU = float64(server.Microseconds()) / float64(events)
	}
	return s, nil
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

// compare measures the variants against each other: one untimed warm-up run
// each (none if o.warmup is 0), then opts.runs timed runs each, in an order rotated every round so
// that drift (table growth, checkpoints, autovacuum) hits every variant
// alike. It returns the stats in the order of vs.
func compare(ctx context.Context, o options, label string, workers int, d time.Duration, vs ...variant) ([]stats, error) {
	once := func(v variant, run string, d time.Duration) (sample, error) {
		ops, err := v.start(ctx, run, workers)
		if err != nil {
			return sample{}, fmt.Errorf("%s: %w", v.name, err)
		}
		var s sample
		// Labelled, so that a -cpuprofile can be split by variant
		// (go tool pprof -tagfocus variant=…); goroutines started by the
		// operations (a projector's) inherit the label.
		pprof.Do(ctx, pprof.Labels("variant", v.name), func(ctx context.Context) {
			s, err = timedRun(ctx, ops, d)
		})
		if err != nil {
			return sample{}, fmt.Errorf("%s: %w", v.name, err)
		}
		return s, nil
	}
	for _, v := range vs {
		if o.warmup <= 0 {
			break // runs too long to warm up for (o.warmup set to 0 by the caller)
		}
		if _, err := once(v, "warm", o.warmup); err != nil {
			return nil, err
		}
	}
	runs := make([][]sample, len(vs))
	for r := range o.runs {
		for k := range vs {
			i := (k + r) % len(vs)
			s, err := once(vs[i], fmt.Sprintf("r%d", r), d)
			if err != nil {
				return nil, err
			}
			runs[i] = append(runs[i], s)
		}
	}
	out := make([]stats, len(vs))
	for i := range vs {
		out[i] = summarize(runs[i])
	}
	line := label + ":"
	for i, v := range vs {
		line += fmt.Sprintf("  %s %.0f/s", v.name, out[i].rate)
	}
	log.Print(line)
	return out, nil
}
