package main

import (
	"fmt"
	"strings"
	"time"
)

// report is the whole of BENCHMARKS.md: generated tables plus fixed text.
type report struct {
	opts    options
	env     environment
	started time.Time
	elapsed time.Duration
	rows    []row

	loadBefore, loadAfter string
}

func (r report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	p("# Benchmarks\n\n")
	p("Written by `make bench` (`go run ./internal/cmd/conduit-bench -out BENCHMARKS.md`) on %s in %s%s.\n",
		r.started.UTC().Format("2006-01-02 15:04 MST"), r.elapsed.Round(time.Second), r.modeNote())
	p("Do not edit by hand: a rerun overwrites the file, figures and text alike (the text lives in\n")
	p("`internal/cmd/conduit-bench/report.go`).\n\n")
	p("Conduit and a raw pgx baseline do the same work against the same database in one run. Every figure is\n")
	p("the **median of %d runs**; the ratio is Conduit's median over the baseline's.\n\n", r.opts.runs)

	p("## Results\n\n")
	p("| Workload | Conduit events/s | Baseline events/s | Conduit / baseline | Target | Met | Conduit p50 / p99 | Baseline p50 / p99 |\n")
	p("|---|---:|---:|---:|---:|:-:|---:|---:|\n")
	group := ""
	for _, row := range r.rows {
		if row.group != group {
			group = row.group
			p("| **%s** | | | | | | | |\n", group)
		}
		met := "yes"
		if !row.met() {
			met = "**no**"
		}
		p("| %s | %s | %s | %.2f× | ≥ %.1f× | %s | %s | %s |\n", row.name, rate(row.conduit.rate), rate(row.raw.rate),
			row.ratio(), row.target, met, latencies(row, row.conduit), latencies(row, row.raw))
	}
	p("\nBaselines:\n")
	for _, row := range r.rows {
		p("- %s, %s: %s.\n", strings.ToLower(row.group), row.name, row.baseline)
	}
	p("\n")

	if r.hasDiagnostics() {
		p("## Diagnostic variants\n\n")
		p("Further variants measured in the same rotation, to split Conduit's cost between the database and the\n")
		p("Go library. Ratios are against the same row's baseline.\n\n")
		p("| Workload | Variant | events/s | / baseline | p50 / p99 |\n|---|---|---:|---:|---:|\n")
		for _, row := range r.rows {
			for _, d := range row.diagnostics {
				p("| %s, %s | %s | %s | %.2f× | %s |\n", strings.ToLower(row.group), row.name, d.name, rate(d.s.rate),
					d.s.rate/row.raw.rate, latencies(row, d.s))
			}
		}
		p("\n")
	}

	p("## Where the time goes\n\n")
	var missed []string
	for _, row := range r.rows {
		if !row.met() {
			missed = append(missed, fmt.Sprintf("%s, %s (%.2f× against ≥ %.1f×)", strings.ToLower(row.group), row.name, row.ratio(), row.target))
		}
	}
	if len(missed) == 0 {
		p("Every target is met in this run.\n\n")
	} else {
		p("Targets missed in this run: %s.\n\n", strings.Join(missed, "; "))
	}
	p("%s\n", analysis)

	p("## Method\n\n")
	p("Machine: %d cores (%s), Go %s, GOMAXPROCS default. PostgreSQL on the same machine over TCP\n", r.env.cores, r.env.cpu, r.env.goVer)
	p("(127.0.0.1), untuned except as shown:\n\n| Setting | Value |\n|---|---|\n")
	for _, s := range r.env.settings {
		p("| `%s` | %s |\n", s[0], s[1])
	}
	p("\nOther work on the machine during this run (the server is shared): at the start %s; at the end %s.\n\n",
		r.loadBefore, r.loadAfter)
	p("%s", method)
	return b.String()
}

func (r report) modeNote() string {
	var notes []string
	if r.opts.quick {
		notes = append(notes, "`-quick`")
	}
	if len(r.opts.only) > 0 {
		notes = append(notes, "`-only="+strings.Join(r.opts.only, ",")+"`")
	}
	if len(notes) == 0 {
		return ""
	}
	return " (" + strings.Join(notes, ", ") + ": not the full benchmark)"
}

func (r report) hasDiagnostics() bool {
	for _, row := range r.rows {
		if len(row.diagnostics) > 0 {
			return true
		}
	}
	return false
}

// summary is what the command prints after writing the file.
func (r report) summary() string {
	var b strings.Builder
	for _, row := range r.rows {
		met := "met"
		if !row.met() {
			met = "NOT MET"
		}
		fmt.Fprintf(&b, "%-22s %-34s conduit %9s  raw %9s  %.2fx (target >= %.1fx) %s\n",
			row.group, row.name, rate(row.conduit.rate), rate(row.raw.rate), row.ratio(), row.target, met)
	}
	return b.String()
}

func rate(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	// Thousands separators for readability.
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func latencies(row row, s stats) string {
	if !row.latency {
		return "–"
	}
	return fmt.Sprintf("%s / %s", ms(s.p50), ms(s.p99))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// method is the fixed description of how the figures are made.
const method = `Procedure, in one run of the program:

- Each workload gets a fresh database (` + "`conduit_bench_<workload>`" + `), migrated with ` + "`conduit.Migrate`" + `,
  dropped at the end. The raw baseline table ` + "`bench.raw_events`" + ` is ` + "`CREATE TABLE … (LIKE conduit.events\n  INCLUDING ALL)`" + `: the same columns, defaults, identity, CHECK constraints and indexes (primary key
  ` + "`(transaction_id, global_position)`" + `, ` + "`UNIQUE (stream_id, stream_version)`" + `, ` + "`UNIQUE (event_id)`" + `), without
  Conduit's triggers and append function.
- Events are about 90 bytes of JSON with a UUIDv7 id made in Go; every variant pays for making them alike.
- **Single-event appends**: W writers (1, 8, 32), each on its own stream, on a pool of exactly W connections
  opened before timing. Conduit: ` + "`Store.Append(ctx, stream, conduit.Exactly(v), event)`" + `, one statement in
  autocommit (no synchronous projections). Baseline: ` + "`INSERT INTO bench.raw_events … VALUES ($1…$5)`" + ` in
  autocommit, no version or id check. Latency is per append, from call to return.
- **100-event appends**: one writer, 100 events per append into its own stream, expected version checked.
  Baseline: one ` + "`INSERT … SELECT … FROM unnest($3::uuid[], $4::text[], $5::text[]) WITH ORDINALITY`" + `.
- **Reads**: 1,000,000 events loaded through Conduit in 1000-event appends (10 of them into one 10,000-event
  stream, the rest into 1000-event streams), then ` + "`VACUUM (ANALYZE)`" + `. Both readers read the same rows of
  ` + "`conduit.events`" + ` into the same ` + "`conduit.Event`" + ` values (stream read over one connection, repeated for
  the run's length; the global log read once per run). Conduit: ` + "`ReadStream(ctx, id, 1)`" + ` and
  ` + "`ReadAll(ctx, Position{})`" + ` with the default ` + "`ReadPageSize`" + ` (1000). Baseline: one ` + "`SELECT`" + ` per read,
  streaming every row.
- Timing: one untimed warm-up run per variant, then 7 timed runs per variant (2 s each for appends and stream
  reads; one full read for the global log), the order of the variants rotated each round so that drift
  (table and index growth, checkpoints, autovacuum) hits all alike. Reported: the median run's events/s,
  and for appends the medians of the runs' p50 and p99 latencies.
- ` + "`-quick`" + ` (3 runs of 1 s, a 100,000-event log) and ` + "`-only=append,batch,read`" + ` give shorter runs for
  development; ` + "`-cpuprofile`" + ` writes a Go CPU profile; ` + "`-diagnose=false`" + ` skips the diagnostic variants.
`

// analysis is the fixed explanation of the figures, from the investigation
// recorded in it; revise it when the library changes.
const analysis = "Findings from the investigation behind this file (pprof of the Go side, `EXPLAIN ANALYZE`, the\n" +
	"function timed in isolation); the diagnostic rows above are measured on every run.\n\n" +
	`**Reading the global log: a query bug, not a cost.** ` + "`EventListAll`" + ` in ` + "`db/queries/events.sql`" + ` selects
` + "`transaction_id::text::bigint AS transaction_id`" + ` and then says ` + "`ORDER BY transaction_id, global_position`" + `.
PostgreSQL resolves a bare name in ORDER BY to an output column first, so it sorts by the bigint cast, cannot
use the primary key ` + "`(transaction_id, global_position)`" + `, and for every 1000-row page scans and top-N-sorts
every remaining row of the log. ` + "`EXPLAIN ANALYZE`" + ` of the first page over 100,000 events: Parallel Seq Scan +
Sort, 34 ms; the same query with ` + "`FROM conduit.events e … ORDER BY e.transaction_id, e.global_position`" + `:
Index Scan on ` + "`events_global_order`" + `, 0.47 ms. A full read costs time quadratic in the log's length
(minutes for 1,000,000 events), so Conduit's read is capped at 10 s per run here and its figure is the rate
over the part it read. The diagnostic row *ReadAll's page query with ORDER BY e.transaction_id* is that fix
measured from raw pgx. **Suggested change:** qualify the columns of ` + "`EventListAll`" + `'s WHERE and ORDER BY with
the table (or an alias); nothing else changes, the generated Go code included. ` + "`EventListByStream`" + ` has no
such alias clash. The stream read's remaining gap is its 1000-row pages: each is a round trip plus a
materialised ` + "`[]dbgen.EventListAllRow`" + `; the *ReadPageSize 10000* row shows how much of it paging costs.

**Single-event appends: the PL/pgSQL call and pgx's UUID encoding.** The diagnostic rows split the gap:
*append_to_stream from raw pgx* is the database function without the Go library; *checked INSERT in plain
SQL* does the same happy-path checks (expected version, event id unused) in one prepared
` + "`INSERT … SELECT … WHERE`" + ` on the baseline table.
- Database side: timed inside one transaction (5000 calls in a ` + "`DO`" + ` loop, no commit), a raw INSERT costs
  about 17 µs of server CPU, ` + "`conduit.append_to_stream`" + ` about 44 µs, and a ` + "`LANGUAGE sql`" + ` version of it about
  185 µs (PostgreSQL 15 plans a non-inlined SQL function on every call: not an option). The function's extra
  cost is per call, not per row: function entry, three SPI statements each with executor start-up,
  ` + "`RETURN QUERY`" + ` materialising into a tuplestore that the outer ` + "`SELECT … FROM append_to_stream(…)`" + ` scans
  again. At one writer the plain-SQL row comes close to the baseline; at 8 and 32 writers it too falls
  behind, so part of the gap is the checks themselves (two index probes per append), not only PL/pgSQL.
- Go side: in pprof, what ` + "`Store.Append`" + ` spends beyond pgx's round trip is mostly pgx encoding the
  ` + "`[]uuid.UUID`" + ` argument: google/uuid implements none of pgx's UUID interfaces, so for each element pgx tries
  its encode plans, builds an error with ` + "`fmt.Errorf`" + `, and falls back to ` + "`driver.Valuer`" + ` (format to a
  string, parse it back). About 15% of Append's CPU for one event and most of its encoding cost for 100.
  Validation (` + "`json.Valid`" + `, UTF-8) and building the result are small.
- At 8 and 32 writers the two cores are saturated (PostgreSQL and the Go client share them), so every
  microsecond of CPU per append comes straight off throughput; the checks also read the index pages every
  writer is inserting into at that moment (the right edge of ` + "`events_event_id_key`" + ` with UUIDv7 ids, the same
  region of ` + "`events_stream_version_key`" + `), which a blind INSERT does not.

**Suggested changes to the library** (not made here):
1. ` + "`EventListAll`" + `: qualify the columns as above. The largest gap by far.
2. ` + "`Append`" + `'s happy path as one plain prepared statement, e.g. in ` + "`db/queries/events.sql`" + `:
   ` + "`INSERT INTO conduit.events … SELECT … FROM unnest(…) WITH ORDINALITY`" + `, filtered by
   ` + "`WHERE <last version> = $expected AND NOT EXISTS (<event id used>) AND <xid order holds>`" + `,
   ` + "`RETURNING …`" + `; only when it inserts nothing, call
   ` + "`append_to_stream`" + ` (which stays as it is) to classify the outcome (conflict, idempotent duplicate, id
   reuse, transaction order). One round trip on success, two on the rare failure path; the UNIQUE
   constraint still stops racing appends. The plain-SQL diagnostic row is the figure to expect from it:
   better, but at 8 and 32 writers still short of 0.9×, because a checked append does more work than a
   blind INSERT and the two cores are saturated.
3. Encode event ids natively: convert to ` + "`pgtype.UUID{Bytes: id, Valid: true}`" + ` (or ` + "`[16]byte`" + `) in
   ` + "`appendParams`" + `, through a sqlc override for that one parameter, so pgx writes binary UUIDs without
   reflection, errors and string round trips.

The server and the two cores are shared with other sessions (see the activity line under Method); runs are
interleaved so that load hits Conduit and the baseline alike, but single figures move by ±30% between runs,
so read the ratios rather than the absolute rates.
`
