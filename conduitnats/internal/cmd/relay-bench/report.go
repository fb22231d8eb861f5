package main

import (
	"fmt"
	"strings"
	"time"
)

// Targets.
const (
	throughputTarget = 0.8                   // relay / plain loop
	latencyTarget    = 10 * time.Millisecond // p99
)

// report is the section relay-bench appends to BENCHMARKS.md.
type report struct {
	opts        options
	started     time.Time
	elapsed     time.Duration
	natsVersion string
	throughput  throughputResult
	latency     latencyResult
	size        sizeResult
}

func (r report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	o := r.opts
	mode := ""
	if o.quick {
		mode = " with `-quick`"
	}
	p("## Outbox relay into NATS JetStream\n\n")
	p("Written by `make bench` (`go -C conduitnats run ./internal/cmd/relay-bench -append ../BENCHMARKS.md`) on %s in %s%s,\n",
		r.started.UTC().Format("2006-01-02 15:04 MST"), r.elapsed.Round(time.Second), mode)
	p("against NATS %s with JetStream (file storage) on the same machine. Do not edit by hand: the text lives in\n", r.natsVersion)
	p("`conduitnats/internal/cmd/relay-bench/report.go`.\n\n")

	if len(r.throughput.relay) > 0 {
		r.throughputSection(p)
	}
	if len(r.latency.p99) > 0 {
		r.latencySection(p)
	}
	if r.size.delivered > 0 {
		r.sizeSection(p)
	}
	return b.String()
}

func (r report) throughputSection(p func(string, ...any)) {
	o, t := r.opts, r.throughput
	relay, plain := median(t.relay), median(t.plain)
	ratio := relay / plain
	p("| Workload | Relay msg/s | Plain loop msg/s | Relay / plain | Target | Met |\n|---|---:|---:|---:|---:|:-:|\n")
	p("| Backlog of %s messages into JetStream, batches of %s | %s | %s | %.2f× | ≥ %.2g× | %s |\n\n",
		count(o.messages), count(o.batchSize), count(int(relay)), count(int(plain)), ratio, throughputTarget, yesNo(ratio >= throughputTarget))
	p("Medians of %d runs each, alternating (after an untimed run of each). The relay (`Relay.Drain`, BatchSize %d)\n", len(t.relay), o.batchSize)
	p("reads a backlog enqueued beforehand (%d-byte payloads over %d keys, a transaction per 1,000) and hands it to\n", o.payloadBytes, o.keys)
	p("`conduitnats.Publisher` (its defaults: up to %d acknowledgements in flight); the plain loop publishes as many\n", 256)
	p("messages with the same publisher in batches of the same size, each after the previous one is acknowledged: the\n")
	p("relay's publishing without its database. The plain loop makes each batch's messages just before publishing it,\n")
	p("as a producer makes them, so its process holds a batch at a time, as the relay's does. Each run has a stream of\n")
	p("its own. Per relay batch: %.1f database statements (read, fenced save; retiring generations at most once a\n", median(t.statementsPerBatch))
	p("second), of which the read of the next batch and the save of the previous one run on connections of their own\n")
	p("while a batch is published; %.0f%% of the relay's time is spent in `Publish`. Garbage collections per run\n", 100*median(t.publishShare))
	p("(medians): relay %.0f, plain loop %.0f.\n\n", median(t.gcRelay), median(t.gcPlain))
	if len(t.prebuilt) > 0 {
		prebuilt := median(t.prebuilt)
		p("Measured alongside, not the target's baseline: the plain loop publishing from the whole backlog made beforehand\n")
		p("(untimed) reaches %s msg/s (the relay at %.2f× of it), with %.0f garbage collections per run: a process holding\n",
			count(int(prebuilt)), relay/prebuilt, median(t.gcPrebuilt))
		p("%s messages has a heap the collector paces itself by, and runs far less often; no relay or producer holds\n", count(o.messages))
		p("its whole backlog. The relay's process allocates %.0f objects per message during a drain, most of them the\n", median(t.allocsPerMessage))
		p("publisher's (nats.go's acknowledgement futures, headers and JSON-decoded acknowledgements among them), so in a\n")
		p("process with a small heap the collector runs often. The relay itself, run with `GOGC=%d`\n", tunedGOGC)
		p("(`debug.SetGCPercent`), reaches %s msg/s (%.2f× of its runs with the default), with %.0f garbage collections\n",
			count(int(median(t.relayGOGC))), median(t.relayGOGC)/relay, median(t.gcRelayGOGC))
		p("per run.\n\n")
	}
}

func (r report) latencySection(p func(string, ...any)) {
	o, l := r.opts, r.latency
	p50, p99 := median(l.p50), median(l.p99)
	p("| Load | Appends/s | Samples | p50 | p99 | Max | Target | Met |\n|---|---:|---:|---:|---:|---:|---:|:-:|\n")
	p("| Light: single appends with an outbox rule | %.0f | %d | %s | %s | %s | p99 ≤ %s | %s |\n\n",
		l.rate, l.samples, ms(p50), ms(p99), ms(l.max), ms(latencyTarget), yesNo(p99 <= latencyTarget))
	p("From the start of `Store.Append` (one event, which a `Config.Outbox` rule turns into a message in the append's\n")
	p("statement) to its arrival at a JetStream ordered consumer, in one process: the relay runs on a store of its own\n")
	p("(another pool, woken by LISTEN as a relay in another process would be). Medians of %d runs of %s at %d appends/s\n", len(l.p99), o.latencyRun, o.latencyRate)
	p("of the runs' p50 and p99; *max* is the largest single latency in any run. The relay reads below the server's\n")
	p("horizon (the oldest transaction still open in any database), so a long transaction elsewhere delays it: the\n")
	p("longest seen open during these runs, sampled every 50 ms, was %s.\n\n", l.longestTx.Round(time.Millisecond))
}

func (r report) sizeSection(p func(string, ...any)) {
	s := r.size
	p("| Outbox size | Rows | Total (`outbox_status().table_bytes`) | g0 | g1 | g2 | Indexes (g0 / g1 / g2) |\n|---|---:|---:|---:|---:|---:|---:|\n")
	row := func(name string, z outboxSize) {
		p("| %s | %s | %s | %s | %s | %s | %s / %s / %s |\n", name, count(int(z.rows)), bytes(z.total),
			bytes(z.partitions[0]), bytes(z.partitions[1]), bytes(z.partitions[2]),
			bytes(z.indexes[0]), bytes(z.indexes[1]), bytes(z.indexes[2]))
	}
	row("Before", s.before)
	p("| Peak (sampled) | | %s | | | | |\n", bytes(s.peak))
	row("Relay caught up", s.after)
	row(fmt.Sprintf("%s later (retired)", s.settleTime.Round(100*time.Millisecond)), s.settled)
	p("\n%s messages enqueued by %d writers (%d per transaction) in %s (%s msg/s), while the relay delivered them into\n",
		count(s.messages), sizeWriters, sizeTxMessages, s.elapsed.Round(time.Millisecond), count(int(float64(s.messages)/s.elapsed.Seconds())))
	p("JetStream; the writers wait while more than %s are pending (the largest backlog sampled: %s), so the relay\n", count(sizeMaxBacklog), count(int(s.maxPending)))
	p("keeps up. It caught up %s after the first enqueue. RowsPerGeneration %s: %d generation switches sampled\n",
		s.caughtUp.Round(time.Millisecond), count(s.rowsPerGeneration), s.switches)
	p("(every %s). A delivered generation is truncated whole once the relay has switched away from it, so the\n", sizeSampleEvery)
	p("table holds at most three generations, and its size does not grow with the messages it has carried; the\n")
	p("current generation keeps its delivered rows until it is full (the last row). Pending at the end: %d;\n", s.pendingAfter)
	p("delivered: %s. The longest transaction seen open on the server during the run (the relay waits behind it,\n", count(int(s.delivered)))
	p("and a generation fills past RowsPerGeneration meanwhile): %s.\n\n", s.longestTx.Round(time.Millisecond))
}

func yesNo(met bool) string {
	if met {
		return "yes"
	}
	return "**no**"
}

// count formats n with thousands separators.
func count(n int) string {
	s := fmt.Sprintf("%d", n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func bytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f kiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
