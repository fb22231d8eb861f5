package main

import (
	"context"
	"strconv"
)

// A workload measures one family of operations and returns report rows.
// To add one (issue 3: projector catch-up, end-to-end latency, NOTIFY vs
// none, rebuild), write a func(ctx, *server) ([]row, error) that makes its
// own database with srv.freshDB, builds its variants and calls compare, then
// list it here; -only and the report pick it up.
type workload struct {
	name  string // for -only
	title string
	run   func(ctx context.Context, srv *server) ([]row, error)
}

var workloads = []workload{
	{"append", "single-event appends at 1, 8 and 32 writers", benchAppends},
	{"batch", "100-event appends", benchBatchAppends},
	{"read", "reading one 10,000-event stream and the whole global log", benchReads},
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
	conduit  stats
	raw      stats
	target   float64 // the least acceptable conduit/raw throughput ratio
	latency  bool    // p50/p99 per operation are meaningful
	// diagnostics are further variants that split Conduit's cost; each is
	// reported against the baseline.
	diagnostics []diagnostic
}

type diagnostic struct {
	name string
	s    stats
}

func (r row) ratio() float64 { return r.conduit.rate / r.raw.rate }
func (r row) met() bool      { return r.ratio() >= r.target }

// payload is a small, realistic event body (about 90 bytes).
func payload(buf []byte, writer, seq int) []byte {
	buf = append(buf[:0], `{"account":"acct-`...)
	buf = strconv.AppendInt(buf, int64(writer), 10)
	buf = append(buf, `","seq":`...)
	buf = strconv.AppendInt(buf, int64(seq), 10)
	buf = append(buf, `,"amount":1250,"currency":"EUR","memo":"benchmark deposit"}`...)
	return buf
}
