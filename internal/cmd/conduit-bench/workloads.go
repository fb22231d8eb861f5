package main

import (
	"context"
	"strconv"
	"strings"
	"time"
)

// A workload measures one family of operations and adds its figures to
// results. To add one, write a func(ctx, *server, *results) error that makes
// its own database with srv.freshDB (or shares the loaded global log with
// srv.logDB), builds its variants and calls compare, then list it here;
// -only and the report pick it up.
type workload struct {
	name  string // for -only
	title string
	run   func(ctx context.Context, srv *server, out *results) error
}

var workloads = []workload{
	{"append", "single-event appends at 1, 8 and 32 writers", benchAppends},
	{"batch", "100-event appends", benchBatchAppends},
	{"syncproj", "single-event appends with a synchronous projection, alone (as Append sends them) against savepoint batches", rowsOf(benchSyncProjection)},
	{"outbox", "single-event appends that also enqueue an outbox message, against the same appends without", rowsOf(benchOutboxAppends)},
	{"telemetry", "single-event appends with OpenTelemetry SDK meter and tracer providers, against none", rowsOf(benchTelemetry)},
	{"notify", "single-event appends with the post-commit NOTIFY against none, a listener connected", benchNotify},
	{"latency", "end-to-end latency to a projector in another process", benchLatency},
	{"read", "reading one 10,000-event stream and the whole global log", rowsOf(benchReads)},
	{"status", "conduit.projection_status() with 10,000,000 events of lag", benchStatus},
	{"noop", "projector catch-up of the global log with a no-op handler, against one streaming SELECT", benchCatchUpNoop},
	{"catchup", "projector catch-up of the global log with upsert handlers (per event and batch), and its rebuild", benchCatchUp},
	{"online", "online rebuild of a batch upsert projection while 8 writers append and a reader times its queries (appends to the log: last)", benchOnline},
}

// rowsOf adapts a workload that only makes comparison rows.
func rowsOf(f func(context.Context, *server) ([]row, error)) func(context.Context, *server, *results) error {
	return func(ctx context.Context, srv *server, out *results) error {
		rows, err := f(ctx, srv)
		out.rows = append(out.rows, rows...)
		return err
	}
}

// results is everything the workloads measured, in the report's order.
type results struct {
	rows     []row        // Conduit against a baseline, with a ratio target
	latency  []latencyRow // end-to-end latency
	timings  []timingRow  // one-off operations (rebuild)
	status   []statusRow  // projection_status at a large lag
	readers  []readerRow  // a reader's queries during the online rebuild
	findings []string     // measured facts for the analysis (notification counts, ...)
}

// latencyRow is the end-to-end latency of one load under one wake-up mode.
type latencyRow struct {
	load    string
	mode    string
	rate    float64       // appends per second achieved (median of runs)
	samples int           // latencies measured, all runs together
	visible stats         // Append's return to the projector's commit, medians of the runs' p50 and p99
	applied stats         // Append's return to the handler's clock_timestamp(), same
	max     time.Duration // the largest visible latency seen in any run
	drain   time.Duration // median time from the last append to the projector's last commit
	target  time.Duration // p99 target for visible; 0: none (a contrast)
	// p50Target is a p50 target for visible; 0: none.
	p50Target time.Duration
}

func (r latencyRow) met() bool {
	return (r.target == 0 || r.visible.p99 <= r.target) && (r.p50Target == 0 || r.visible.p50 <= r.p50Target)
}

// targetText says the row's targets, "" if none.
func (r latencyRow) targetText() string {
	var t []string
	if r.p50Target > 0 {
		t = append(t, "p50 ≤ "+ms(r.p50Target))
	}
	if r.target > 0 {
		t = append(t, "p99 ≤ "+ms(r.target))
	}
	return strings.Join(t, ", ")
}

// timingRow is a one-off operation measured end to end.
type timingRow struct {
	name    string
	events  int
	elapsed []time.Duration // one per run
}

func (t timingRow) median() time.Duration {
	runs := make([]sample, len(t.elapsed))
	for i, d := range t.elapsed {
		runs[i] = sample{p50: d}
	}
	return time.Duration(median(runs, func(x sample) float64 { return float64(x.p50) }))
}

func workloadNames() []string {
	names := make([]string, len(workloads))
	for i, w := range workloads {
		names[i] = w.name
	}
	return names
}

// row is one line of the report: Conduit against its baseline.
type row struct {
	group    string // the report's section, e.g. "Single-event appends"
	name     string // e.g. "8 writers"
	baseline string // what Conduit is compared with, e.g. "raw INSERT"
	// baselineNote tells rows of one workload against different baselines
	// apart in the row's name, e.g. ", base minimal table".
	baselineNote string
	conduit      stats
	raw          stats
	target       float64 // the least acceptable conduit/raw throughput ratio
	runs         int     // measured runs per variant, if not opts.runs
	latency      bool    // p50/p99 per operation are meaningful
	// diagnostics are further variants that split Conduit's cost; each is
	// reported against the baseline.
	diagnostics []diagnostic
}

type diagnostic struct {
	name string
	s    stats
}

func (r row) ratio() float64 { return r.conduit.rate / r.raw.rate }

func (r row) met() bool { return r.ratio() >= r.target }

// diagnostic is the diagnostic variant of that name.
func (r row) diagnostic(name string) (stats, bool) {
	for _, d := range r.diagnostics {
		if d.name == name {
			return d.s, true
		}
	}
	return stats{}, false
}

// ratioRange is the lowest and the highest of the runs' paired ratios:
// Conduit's run over the baseline's run of the same round (compare
// measures each round's variants one after the other). ok is false unless
// both sides have the same two or more runs.
func (r row) ratioRange() (lo, hi float64, ok bool) {
	c, b := r.conduit.runs, r.raw.runs
	if len(c) < 2 || len(c) != len(b) {
		return 0, 0, false
	}
	for i := range c {
		if b[i].rate <= 0 {
			return 0, 0, false
		}
		x := c[i].rate / b[i].rate
		if i == 0 || x < lo {
			lo = x
		}
		if i == 0 || x > hi {
			hi = x
		}
	}
	return lo, hi, true
}

// payload is a small, realistic event body (about 90 bytes).
func payload(buf []byte, writer, seq int) []byte {
	buf = append(buf[:0], `{"account":"acct-`...)
	buf = strconv.AppendInt(buf, int64(writer), 10)
	buf = append(buf, `","seq":`...)
	buf = strconv.AppendInt(buf, int64(seq), 10)
	buf = append(buf, `,"amount":1250,"currency":"EUR","memo":"benchmark deposit"}`...)
	return buf
}
