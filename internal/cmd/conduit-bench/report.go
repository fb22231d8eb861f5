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
	results

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
	p("the **median of %d runs** unless its row says otherwise; the ratio is Conduit's median over the baseline's.\n", r.opts.runs)
	p("In brackets after a ratio: the lowest and the highest of the runs' paired ratios (each run of Conduit over the\n")
	p("baseline's run of the same round, measured one after the other): how far this machine's noise moved it.\n\n")

	if len(r.rows) > 0 {
		p("## Results\n\n")
		p("| Workload | Conduit events/s | Baseline events/s | Conduit / baseline | Target | Met | Conduit p50 / p99 | Baseline p50 / p99 |\n")
		p("|---|---:|---:|---:|---:|:-:|---:|---:|\n")
		group := ""
		for _, row := range r.rows {
			if row.group != group {
				group = row.group
				p("| **%s** | | | | | | | |\n", group)
			}
			spread := ""
			if lo, hi, ok := row.ratioRange(); ok {
				spread = fmt.Sprintf(" (%.2f–%.2f)", lo, hi)
			}
			p("| %s | %s | %s | %.2f×%s | ≥ %.2g× | %s | %s | %s |\n", r.rowName(row), rate(row.conduit.rate), rate(row.raw.rate),
				row.ratio(), spread, row.target, yesNo(row.met()), latencies(row, row.conduit), latencies(row, row.raw))
		}
		p("\nBaselines:\n")
		for _, row := range r.rows {
			p("- %s, %s: %s.\n", strings.ToLower(row.group), row.name, row.baseline)
		}
		p("\n")
	}

	if len(r.latency) > 0 {
		p("## End-to-end latency\n\n")
		p("From `Store.Append`'s return in the benchmark process to the read-table row committed by a projector in\n")
		p("another process (method below). Medians of %d runs of the runs' p50 and p99; *max* is the largest single\n", min(r.opts.runs, 5))
		p("latency in any run; *row written* is the same start to the handler's `clock_timestamp()` (before its\n")
		p("batch commits: a lower bound); *drain* is the time from the last append's return to the commit of its\n")
		p("row (how far behind the projector was when the writers stopped).\n\n")
		p("| Load | Wake-up | Appends/s | Samples | p50 | p99 | Max | Row written p50 / p99 | Drain | Target | Met |\n")
		p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:-:|\n")
		for _, l := range r.latency {
			target, met := "–", "–"
			if t := l.targetText(); t != "" {
				target, met = t, yesNo(l.met())
			}
			p("| %s | %s | %s | %d | %s | %s | %s | %s / %s | %s | %s | %s |\n", l.load, l.mode, rate(l.rate), l.samples,
				ms(l.visible.p50), ms(l.visible.p99), ms(l.max), ms(l.applied.p50), ms(l.applied.p99), ms(l.drain), target, met)
		}
		p("\n")
	}

	if len(r.timings) > 0 {
		p("## Rebuild\n\n| Operation | Runs | Time (median) | Events/s |\n|---|---:|---:|---:|\n")
		for _, t := range r.timings {
			d := t.median()
			p("| %s | %d | %s | %s |\n", t.name, len(t.elapsed), d.Round(time.Millisecond), rate(float64(t.events)/d.Seconds()))
		}
		p("\n")
	}

	if len(r.readers) > 0 {
		p("## Readers during the online rebuild\n\n")
		p("| Reader's queries | Queries | p50 | p99 | Max | Target | Met |\n|---|---:|---:|---:|---:|---:|:-:|\n")
		for _, q := range r.readers {
			target, met := "–", "–"
			if q.target > 0 {
				target, met = "max ≤ "+ms(q.target), yesNo(q.met())
			}
			p("| %s | %d | %s | %s | %s | %s | %s |\n", q.name, q.reads, ms(q.p50), ms(q.p99), ms(q.max), target, met)
		}
		p("\n")
	}

	if len(r.status) > 0 {
		p("## Status at a large lag\n\n| Query | Runs | Time (median) | Target | Met |\n|---|---:|---:|---:|:-:|\n")
		for _, s := range r.status {
			target, met := "–", "–"
			if s.target > 0 {
				target, met = "≤ "+ms(s.target), yesNo(s.met())
			}
			p("| %s | %d | %s | %s | %s |\n", s.name, len(s.elapsed), ms(s.median()), target, met)
		}
		p("\n")
	}

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
	if len(r.findings) > 0 {
		p("Measured alongside:\n")
		for _, f := range r.findings {
			p("- %s\n", f)
		}
		p("\n")
	}

	r.cpuSection(p)

	p("## Where the time goes\n\n")
	if missed := r.missed(); len(missed) == 0 {
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
	p("%s", method(r.opts))
	return b.String()
}

func (r report) rowName(row row) string {
	if row.runs != 0 && row.runs != r.opts.runs {
		return fmt.Sprintf("%s (median of %d runs)", row.name, row.runs)
	}
	return row.name
}

func yesNo(met bool) string {
	if met {
		return "yes"
	}
	return "**no**"
}

// missed lists the targets this run missed.
func (r report) missed() []string {
	var out []string
	for _, row := range r.rows {
		if !row.met() {
			out = append(out, fmt.Sprintf("%s, %s (%.2f× against ≥ %.2g×)", strings.ToLower(row.group), row.name, row.ratio(), row.target))
		}
	}
	for _, l := range r.latency {
		if !l.met() {
			out = append(out, fmt.Sprintf("end-to-end latency, %s, %s (p50 %s, p99 %s against %s)", l.load, l.mode,
				ms(l.visible.p50), ms(l.visible.p99), l.targetText()))
		}
	}
	for _, q := range r.readers {
		if !q.met() {
			out = append(out, fmt.Sprintf("online rebuild, reader %s (max %s against ≤ %s)", q.name, ms(q.max), ms(q.target)))
		}
	}
	for _, s := range r.status {
		if !s.met() {
			out = append(out, fmt.Sprintf("%s (%s against ≤ %s)", s.name, ms(s.median()), ms(s.target)))
		}
	}
	return out
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
		spread := ""
		if lo, hi, ok := row.ratioRange(); ok {
			spread = fmt.Sprintf(" (runs %.2f-%.2f)", lo, hi)
		}
		fmt.Fprintf(&b, "%-33s %-38s conduit %9s  base %9s  %.2fx%s (target >= %.2gx) %s\n",
			row.group, row.name, rate(row.conduit.rate), rate(row.raw.rate), row.ratio(), spread, row.target, met)
	}
	for _, l := range r.latency {
		met := ""
		if t := l.targetText(); t != "" {
			met = "target " + t + ": met"
			if !l.met() {
				met = "target " + t + ": NOT MET"
			}
		}
		mode, _, _ := strings.Cut(l.mode, " (")
		fmt.Fprintf(&b, "latency %-32s %-22s p50 %9s  p99 %9s  %s\n", l.load, mode, ms(l.visible.p50), ms(l.visible.p99), met)
	}
	for _, t := range r.timings {
		d := t.median()
		fmt.Fprintf(&b, "%s: %s, %s events/s\n", t.name, d.Round(time.Millisecond), rate(float64(t.events)/d.Seconds()))
	}
	for _, s := range r.status {
		fmt.Fprintf(&b, "%s: %s (median of %d)\n", s.name, ms(s.median()), len(s.elapsed))
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

// method is the fixed description of how the figures are made, with the
// run's counts and lengths.
func method(o options) string {
	return fmt.Sprintf(methodText, o.runs, o.duration, o.readEvents, o.catchUpRuns, o.rebuildRuns, min(o.runs, 5), o.latencyRun)
}

// methodText's verbs: runs, run length, log size, upsert catch-up runs,
// rebuild runs, latency runs, latency run length.
const methodText = `Procedure, in one run of the program:

- Each workload gets a fresh database (` + "`conduit_bench_<workload>`" + `), migrated with ` + "`conduit.Migrate`" + `,
  dropped at the end; the read and catch-up workloads share one (` + "`conduit_bench_log`" + `) holding the loaded
  global log. The raw baseline table ` + "`bench.raw_events`" + ` is ` + "`CREATE TABLE … (LIKE conduit.events\n  INCLUDING ALL)`" + `: the same columns, defaults, identity, CHECK constraints and indexes (primary key
  ` + "`(transaction_id, global_position)`" + `, ` + "`UNIQUE (stream_id, stream_version)`" + `, ` + "`UNIQUE (event_id)`" + `), without
  Conduit's triggers. The minimal baseline table ` + "`bench.min_events`" + ` has the same columns but only an identity
  primary key and ` + "`UNIQUE (stream_id, stream_version)`" + `, no transaction id: what any store needs at least to check
  versions. Each append row is reported against both, from one rotation (the Conduit figures are the same).
- Events are about 90 bytes of JSON with a UUIDv7 id made in Go; every variant pays for making them alike.
- **Single-event appends**: W writers (1, 8, 32), each on its own stream, on a pool of exactly W connections
  opened before timing. Conduit: ` + "`Store.Append(ctx, stream, conduit.Exactly(v), event)`" + ` with the default
  ` + "`Config`" + ` (the post-commit NOTIFY on, nobody listening; no synchronous projections; concurrent appends
  batched, see below). Baselines: ` + "`INSERT INTO bench.raw_events … VALUES ($1…$5)`" + ` and the same into
  ` + "`bench.min_events`" + `, in autocommit (one transaction per INSERT), no version or id check. The diagnostic
  *conduit, batching off* is the same store with ` + "`Config.DisableAppendBatching`" + `: every append a statement
  and a transaction of its own, as before batching (at 1 writer the two must not differ: an append that finds
  nothing in flight is sent at once). Latency is per
  append, from call to return. Event ids go to the server as text in every variant, as Conduit sends them
  (pgx encodes a ` + "`uuid.UUID`" + ` through ` + "`driver.Valuer`" + ` with an error built per value: a cost of the
  baseline's, not of the work).
- **100-event appends**: one writer, 100 events per append into its own stream, expected version checked.
  Baseline: one ` + "`INSERT … SELECT … FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY`" + `.
- **Appends with a synchronous projection**: W writers (8, 32) on a pool of W connections, a store with one
  projection in ` + "`Config.Projections`" + ` (an upsert of the stream's event count into a read table). Conduit:
  ` + "`Store.Append`" + `, which sends such appends alone (a transaction each). Baseline: what batching them with a
  savepoint per append would do at best, one worker appending to the W streams in one transaction, each
  append (` + "`AppendTx`" + `, which runs the projection) between ` + "`SAVEPOINT`" + ` and ` + "`RELEASE`" + `, one transaction at a time
  (the batcher's single lane) and with no hand-off between goroutines. Latency is not comparable (per
  append against per transaction) and not shown. The target (≥ 1×) is the reason those appends go alone.
- **Appends with NOTIFY**: as the single-event appends, while a separate raw pgx connection LISTENs on
  ` + "`conduit_events`" + ` and reads every notification (so delivery is paid for in the run). Conduit with the
  default ` + "`Config`" + ` (NOTIFY sent after commit on a pool connection, coalesced to at most one per
  ` + "`NotifyInterval`" + ` = 5 ms) against the same store with ` + "`DisableNotify: true`" + `, on one pool of W + 1
  connections.
- **End-to-end latency**: the benchmark re-executes itself as a child process running a ` + "`conduit.Projector`" + `
  on the same database, whose handler inserts one row (event id, ` + "`clock_timestamp()`" + `) per event of its
  type. The parent appends with ` + "`Store.Append`" + ` (one event per append, ` + "`Exactly(v)`" + `): *light* is one writer
  paced at 100 appends/s, *8 writers* is a closed loop. It notes the wall clock right after each Append
  returns. In the child, each applied event is queued, and a goroutine calls ` + "`Store.WaitFor`" + ` on the last
  queued position — woken in-process right after the batch's COMMIT returns, it reads the checkpoint once —
  and reports every event it covered with the wall clock at that moment. Both processes and PostgreSQL run
  on this machine and read the same system clock, so the difference is the latency from Append's return to
  the row being committed and visible, overstated by that one checkpoint read (about 0.1–0.3 ms). Two
  wake-up modes, each with its own projection and event type, alternating run by run, a fresh child per
  run (started, caught up and, with NOTIFY, LISTENing before the appends begin): NOTIFY (the appender's
  default ` + "`Config`" + `, the child's default ` + "`ProjectorConfig`" + `: PollInterval 1 s) and polling only (appender
  ` + "`DisableNotify`" + `, child ` + "`PollOnly`" + ` with ` + "`PollInterval`" + ` 100 ms). %[6]d runs of %[7]s per mode and load, after
  one warm-up run each.
- **Reads**: %[3]d events loaded through Conduit in 1000-event appends by two writers (10 of them into one
  10,000-event stream, the rest into 1000-event streams), then ` + "`VACUUM (ANALYZE)`" + `. Both readers read the same
  rows of ` + "`conduit.events`" + ` into the same ` + "`conduit.Event`" + ` values (stream read over one connection, repeated for
  the run's length; the global log read once per run). Conduit: ` + "`ReadStream(ctx, id, 1)`" + ` and
  ` + "`ReadAll(ctx, Position{})`" + ` with the default ` + "`ReadPageSize`" + ` (1000). Baseline: one ` + "`SELECT`" + ` per read,
  streaming every row.
- **Projector catch-up**: over the same log, a new ` + "`conduit.Projector`" + ` (default ` + "`ProjectorConfig`" + `, BatchSize
  1000; its ` + "`Store`" + ` on a pool of 4 with ` + "`Config.MaxProjectorConns`" + ` 3, so that a projector has two connections
  to read ahead on: budgets of 2, and the pool's default of 1, are measured as diagnostics) from ` + "`Run`" + ` until ` + "`Store.WaitFor`" + ` sees its checkpoint at the log's last event; fresh projection
  name and read table per run. *Upsert handler*: ` + "`INSERT INTO <table> (stream_id, events) VALUES ($1, 1) ON\n  CONFLICT (stream_id) DO UPDATE SET events = events + 1`" + ` per event (the log's 1000-event appends put
  1000 events of one stream in a row, so most batches update one row 1000 times); the read table is checked
  to count every event once. Baseline: a hand-written pgx loop — per transaction one page of 1000 events
  below the safe horizon with the projector's query shape, the same upserts one by one, an upsert of a
  checkpoint row, commit — until a short page. *No-op handler*: the handler does nothing; baseline: the raw
  global read above (one SELECT streaming every row).
  *Batch upsert handler*: a ` + "`conduit.BatchProjection`" + ` whose ` + "`ApplyBatch`" + ` writes the batch with one statement
  (` + "`INSERT … SELECT s, count(*) FROM unnest($1::text[]) AS s GROUP BY s ON CONFLICT (stream_id) DO UPDATE SET\n  events = events + EXCLUDED.events`" + `); baseline: the same hand-written loop running that statement once per page.
- **Rebuild**: ` + "`Store.RebuildProjection`" + ` (` + "`conduit.rebuild_projection`" + `: truncate the read table, reset the
  checkpoint, in one transaction) on the caught-up upsert projections (per event, and batch) while their
  projector runs, then ` + "`WaitFor`" + ` until the replay has passed the log's last event; the read table is checked
  afterwards. *Online rebuild*: ` + "`Store.RebuildProjectionOnline`" + ` on a caught-up batch upsert projection while 8
  writers append single events in a closed loop and a reader polls ` + "`SELECT sum(events)`" + ` of the read table on
  its own connection; timed from the call to the swap (the status polled every 10 ms), its events/s are the
  events replayed into the shadow table; the reader's totals must never go down. The reader times each of its
  queries and notes the table's oid it read (` + "`tableoid`" + `), so the swap is between the last query that saw the
  old table and the first that saw the new one: *around the swap* are the queries begun within 1 s of it (a
  query queued behind the swap's lock waits in it; the target is that none takes over 100 ms: the swap waits
  50 ms at most for readers' locks, its ` + "`lock_timeout`" + `, then holds them for its short transaction),
  *away from the swap* the others, for contrast (the machine's load from the writers
  and the replay is in every time).
- **Status**: ` + "`conduit.projection_status()`" + ` for a projection 10,000,000 events behind (loaded with one
  ` + "`INSERT … SELECT … generate_series`" + `, then ` + "`VACUUM ANALYZE`" + `), 11 calls, median; against migration 2's
  version (kept as ` + "`conduit.projection_status_00002`" + `), which counts every event behind, 3 calls.
- Timing: one untimed warm-up run per variant, then %[1]d timed runs per variant (%[2]s each for appends and
  stream reads; one full read or catch-up for the global log), the order of the variants rotated each round
  so that drift (table and index growth, checkpoints, autovacuum, other sessions) hits all alike. Reported:
  the median run's events/s, and for appends the medians of the runs' p50 and p99 latencies. The upsert
  catch-up takes over a minute per run, so it gets %[4]d runs per variant and no warm-up (the log was just
  read in full), and the rebuild %[5]d.
- ` + "`-quick`" + ` (3 runs of 1 s, a 100,000-event log, 1 upsert catch-up run), ` + "`-events=N`" + ` (the log's size)
  and ` + "`-only=<workloads>`" + ` give shorter runs for development; ` + "`-cpuprofile`" + ` writes a Go CPU profile whose samples are labelled with the variant
  (` + "`go tool pprof -tagfocus 'variant=…'`" + `); ` + "`-diagnose=false`" + ` skips the diagnostic variants.
`

// analysis is the fixed explanation of the figures, from the investigation
// recorded in it; revise it when the library changes. It describes the
// library as of the commit that last changed this file.
const analysis = "Findings from the investigation behind this file (pprof of the Go side split by variant, server CPU\n" +
	"per statement timed in a `DO` loop, and the diagnostic rows, which are measured on every run). The machine\n" +
	"has two cores shared with other sessions: single figures move by 10–30% between runs, so read the ratios,\n" +
	"and take a ratio within a few hundredths of its target as a tie rather than a verdict.\n\n" +
	`**Single-event appends at 8 and 32 writers (targets ≥ 1.0× and ≥ 1.5×): batching.** The appends of a ` + "`Store`" + ` that
arrive while another is in flight are sent together, in one statement (` + "`conduit.append_batch`" + `, migration 8) and
one transaction, when the database answers: one round trip, one commit and one set-based INSERT for up to
` + "`Config.MaxAppendBatch`" + ` appends, where the baselines pay a transaction per row. Each append keeps its own
version check. The *conduit, batching off* diagnostic is what the same appends cost one transaction each. A
single batch is in flight at a time (a second in flight made smaller batches and fewer appends per second on
this 2-core machine), so at 1 writer nothing changes.
- Batch sizes. Each writer appends again as soon as its append returns. When a batch's answer came, the
  first of its callers to append again used to find the lane free and go alone, and the others queued behind
  it: at 8 writers (counted in a test run) about a quarter of the sends were a lone append and the rest
  batches of 2 to 8, 4.5 appends per send. Now, right after a batch of several appends, the next batch
  waits until as many appends wait, for at most a quarter of the last batch's time (and 1 ms); after an
  append alone nothing waits, so at 1 writer nothing changes. At 8 writers almost every send is then a batch
  of 8 (6.5 appends per send under the race detector, with the ramps; 4.2–4.5 without the wait). In
  interleaved runs (a store without the wait as one more variant, since removed) the wait gave 1.33× and
  1.44× the appends per second at 8 writers; at 32 writers 1.02× and 0.86×, within this machine's noise
  there (the queue refills while a batch is in flight, so the wait seldom applies).
- What bounds it (*CPU per event*, measured on every run since 2026-12-01). At 8 writers Conduit spends
  about a third less CPU per append than the raw INSERTs, at 32 writers well over half less, but it uses
  about one of the two cores where the baselines use about one and a half: with one batch in flight, the
  commit's WAL flush, the round trip and the callers' turn back to the next append are waits. Two batches
  in flight use more of the machine but make smaller batches, and a batch has a fixed cost of about 200 µs
  of server CPU whatever its size (the statement's executor start, the commit and its flush; measured with
  ` + "`conduit.append_batch_one`" + ` from raw pgx at 2, 4, 8 and 32 appends: about 14 µs more per append), so two lanes
  still lost on 2026-12-01 with the fix below (8 writers: 11.2k against 12.8k appends/s, server CPU per
  append 77–81 µs against 47). Sending the batch as two plain statements in one round trip instead of the
  PL/pgSQL function (lock, then the statement with its own snapshot) cost the same. The ratio against the
  minimal table therefore moves with the machine: when commits are slow (a loaded machine) every baseline
  row pays one and batching wins more; on a quiet machine its commits are cheap and the ratio is lower.
- A batch's cost. Backend CPU per append, read from /proc around 2000 statements on one connection (commit
  included, synchronous_commit off, the machine loaded): a raw single-row INSERT about 80–100 µs, the
  single-event ` + "`EventAppendOne`" + ` about 160–180 µs, and ` + "`conduit.append_batch`" + ` with 8 single-event appends about
  60–110 µs per append: a batch of 8 cost the server about what 8 raw INSERTs with their commits do. Most
  batches hold single-event appends without outbox messages; they now go through
  ` + "`conduit.append_batch_one`" + ` (migration 11): one array entry per append, event included, so no window function
  to number each append's events, no join of events to appends and no sort to find each append's last
  event. Measured the same way, interleaved (4 rounds of 400 batches of 8): about 110 µs per append through
  ` + "`append_batch`" + `, about 78 µs through ` + "`append_batch_one`" + `.

**Single-event appends at 1 writer (target ≥ 0.9×): what is left is mostly database work per statement.** ` + "`Append`" + ` writes
in one plain prepared statement and calls ` + "`conduit.append_to_stream`" + ` only when that inserts nothing. For one
event it is ` + "`EventAppendOne`" + ` (` + "`db/queries/events.sql`" + `): scalar parameters, ` + "`INSERT … SELECT … FROM head WHERE\n<expected version> AND <transaction order>`" + `, where ` + "`head`" + ` is a backward index probe for the stream's last
version; with ` + "`Exactly(n)`" + ` or ` + "`NoStream`" + ` it no longer looks the event id up (the version check already
refuses a retry; the unique index stops a reused id). Ids go as text.
- Go side (pprof, focus ` + "`Store.Append`" + `, previous statement): about 88% of Append's CPU is the statement's
  round trip (pgx writing and reading the socket), about 10% validation (then ` + "`json.Valid`" + `, UTF-8 and a scan
  for what jsonb refuses; since one pass about 3× faster, ` + "`BenchmarkCheckJSON`" + `). The
  ` + "`[]uuid.UUID`" + ` fallback through ` + "`driver.Valuer`" + ` of the first version is gone (the baselines send ids as
  text too, so neither side pays it). The coalesced NOTIFY sender is under 0.1% of the client's CPU.
- Server side, timed inside one transaction (5000 statements in a ` + "`DO`" + ` loop, rolled back, three repeats):
  a raw single-row INSERT cost about 22 µs of server CPU, the previous fast statement (one-element
  ` + "`unnest`" + `, id probe) about 36 µs, of which the id probe about 3 µs. The rest of the difference is the head
  probe, the transaction-order comparison and the INSERT … SELECT plan, per statement.
- The diagnostic row *checked INSERT in plain SQL* sends the version check and the id probe from raw pgx
  (no library, no transaction-order check, nothing returned). Conduit's statement also returns the new
  row's position (` + "`RETURNING`" + `, four columns) and checks the transaction order, and in these rows its
  post-commit NOTIFY borrows one of the W pool connections about 200 times a second (at 1 writer: the only
  one); where Conduit falls below the diagnostic, that is where the difference goes. The NOTIFY rows, with
  a pool of W + 1, isolate the NOTIFY's share.
- At 8 and 32 writers the W connections of the raw variants keep both cores nearly busy (*CPU per event*),
  so every µs of server CPU per append comes straight off their throughput, and the head probe reads the
  index pages the other writers are inserting into; a blind INSERT reads nothing. At 1 writer the round trip and the commit's WAL flush
  dominate and the gap is smallest.

**100-event appends (target ≥ 0.9×): per-event work the baseline does not do, and an index it does not keep.**
Against the minimal table the ceiling is set by conduit.events itself: its third index (UNIQUE (event_id), which
idempotent retries and the event id conflict check rely on), its composite primary key and its CHECKs cost a raw
INSERT of the same rows a share that "Measured alongside" gives for this run (the LIKE table against the minimal
one); no store keeping those indexes passes that ratio without inserting faster than a raw INSERT into its own
table. Against the LIKE table (the same indexes) the comparison is of the statements. One statement either way,
and the checks' per-statement cost is spread over 100 rows: the *checked INSERT in plain SQL* row comes
close to the baseline. What Conduit adds is per event. In the database: a fourth array (metadata) zipped
with ` + "`ROWS FROM`" + ` (its plan is generic, evaluates the version check once, not per row, and needs no sort: the
planner knows the ordinality's order), and the inserted rows gathered to return the last one (without
synchronous projections ` + "`Append`" + ` asks for the last row only; with them, for all 100). Backend CPU per event
(read from /proc around 1000 statements, the machine loaded) came out 10–30% above the raw statement's, most of
it the insert itself, the same as the baseline's. In Go (pprof, by variant): encoding the statement's arrays and
validating the 100 events took roughly a tenth of an append's time; the validation (then three passes: ` + "`json.Valid`" + `,
UTF-8, a scan for what jsonb refuses) is now one pass, about 3× faster (` + "`BenchmarkCheckJSON`" + `), a gain of a few
percent at most here, below what this machine resolves. At one writer the coalesced NOTIFY takes the pool's
only connection up to 200 times a second.

**Appends that enqueue an outbox message (target ≥ 0.85×): a second row per append.** A ` + "`Config.Outbox`" + ` rule's
message is written in the append's own statement (` + "`EventAppendOneOutbox`" + `, or ` + "`conduit.append_batch_one_outbox`" + ` for
a batch): one more INSERT in the plan and one more row per append, with its index entry
` + "`(transaction_id, position)`" + `, its partition's routing, a position from a sequence and the headers parsed to jsonb; in Go, the
rule's message, its checks, the headers' JSON and six more arrays to encode. The *CPU per event* rows show the
cost: the message adds about a quarter to the server's CPU per append and about a third to the client's, and at 8
writers, with one batch in flight, the added work is on the batch's path, so the throughput ratio follows the CPU
ratio. From raw pgx (one connection, ` + "`synchronous_commit`" + ` off, 2026-12-01): ` + "`conduit.append_batch_one`" + ` with 8
appends about 322 µs a call, ` + "`append_batch_one_outbox`" + ` with the same 8 and no message 333 µs, one message 348 µs,
8 messages 385 µs: about 10 µs for the second INSERT in the plan, 15 µs for its first row (the partition
opened, its index), 5 µs for each further row. Variants of the table (not partitioned, no index, a cached
sequence, the partition written directly, the generation given rather than defaulted) all came within this
machine's noise of each other: no one part of the row dominates. Naming the generation in the single-event
statement rather than calling the column default's PL/pgSQL function (migration 16; it also takes a message's
key's lock with the stream's, migration 17, one lock when the key is the stream) left the statement's server CPU
where it was: 152 µs against 150 before, medians of 9 rounds of 1,000 (2026-12-01). Not done: writing less per message (one row
for a batch's messages, a cheaper Go path) would by these figures still leave the ratio near 0.84; what would
meet the target is not writing a rule's message at append time at all (a relay that reads the ruled events from
the log, as a projector does, beside the outbox's explicit messages), a change to the outbox's design.

**Appends with a synchronous projection: alone, measured against savepoint batches.** A projection's
failure must roll back its own append only, so a batch of such appends needs a savepoint per append. A
prototype in the library (locks of the batch's streams first, then per append ` + "`SAVEPOINT`" + `, the append,
the projection, ` + "`RELEASE`" + `, one commit) made 0.61× (8 writers) and 0.51× (32 writers) of the same appends
alone in a quick run, and was taken out; this row measures the mechanism's best case on every run. The
batch shares one commit, but its statements go one after the other on one connection (four round trips per
append, as many as an append alone has), while appends alone run side by side on W connections and the
server already shares their commits' WAL flushes.

**NOTIFY (target ≥ 0.95× of none).** A NOTIFY inside each append's transaction serialises committing
transactions (PostgreSQL takes a database-wide lock at commit for queued notifications): the diagnostic
*raw INSERT with pg_notify in its transaction* shows it, against the raw INSERT of the single-event rows.
Conduit sends the NOTIFY after the append has committed instead, as a statement of its own on a pool
connection with ` + "`synchronous_commit`" + ` off, at most one per ` + "`NotifyInterval`" + ` (5 ms): the first append after a
quiet spell is notified at once, a busy spell's appends share one notification at the end of each interval.
So it costs about 200 small transactions a second whatever the append rate (see the notification counts
above: one per tens of appends at 8 and 32 writers) plus their delivery to the listener.
Its cost is below what this shared machine resolves. In the investigation three runs of this workload
gave 1.05 / 0.98 / 0.88× (quick), 1.01 / 0.92 / 0.92× (full) and 0.89 / 1.04 / 0.99× (9 runs of this
workload alone) at 1 / 8 / 32 writers: no concurrency consistently below 0.95×, none consistently above.
pprof by variant shows the same client CPU per append with and without (the sender goroutine is under
0.1% of the run's CPU). A miss by a few hundredths in the table above is noise at this resolution; to
check one, repeat ` + "`-only=notify -runs 9`" + `.

**End-to-end latency (target p99 ≤ 10 ms at light load).** At 100 appends/s every append is the first of
a quiet spell and is notified at once. The path is: NOTIFY statement and commit (one round trip), delivery
to the child's listener connection, the in-process wake-up of its projector, then one batch: BEGIN, the
lease lock (` + "`SELECT … FOR KEY SHARE`" + `, which also sets the idle timeout and says whether parked events wait for
a retry) and the page read sent together (one round trip: the page is read after the checkpoint the
instance committed last, and used if the lock finds the checkpoint there), the handler's INSERT, then the
checkpoint UPDATE (which also says whether events follow the checkpoint, and fails if the lease is gone) and
COMMIT (asynchronous: no WAL flush wait) sent together — four round trips — then the report. A batch
followed at once by another (under load) also sends the next batch's BEGIN with its COMMIT, so the next
batch takes three. The *row written* column (the handler's clock, same
start) shows that a little under half of it passes before the handler runs, the rest after it (the end
of the batch, the COMMIT's WAL flush, the report). With 8 writers in a closed loop the projector keeps up
(the *drain* column: tens of ms behind when the writers stop) but it applies one event per round trip and
commits once per batch of up to 1000 events, so an event waits for the rest of its batch: the latency is
about one batch's duration, and the NOTIFY only decides when the first batch starts. A smaller
` + "`BatchSize`" + ` trades catch-up throughput for latency under load. Polling every 100 ms
gives about half the interval at p50 and the whole interval at p99, as the issue says.

**Reads (target ≥ 0.9×): paging, and decoding.** ` + "`ReadStream`" + `, ` + "`ReadAll`" + ` and projector batches take each row
straight from the wire into an ` + "`Event`" + ` (no page of generated rows built, then copied), and a full read of
the log reads the primary key. Paging costs: the diagnostic *ReadAll's page query (1000 rows) from raw pgx*
runs the same query without the library and stays near 0.8× of the single streaming SELECT (a round trip,
an executor start-up, the horizon check and an index descent per 1000 rows). Conduit makes it up per row:
it decodes the binary row itself (` + "`internal/dbgen.EventDecoder`" + `: int8, xid8, uuid, timestamptz from their
binary form, text and jsonb as bytes; data and metadata copied into one shared block per few hundred rows,
a stream id equal to the previous row's and known event types not allocated again), where the baselines
call pgx's ` + "`rows.Scan`" + ` (a plan dispatch per value, an allocation per text, jsonb and bytea value). A result
it does not know (another type or format, a codec of the connection's own) is scanned as before.
A read's pages grow: the first has ` + "`ReadPageSize`" + ` rows, and each next one twice the last while the loop keeps up
(a page read and handled within 20 ms), up to 16 times ` + "`ReadPageSize`" + `; so a long read pays for few page queries,
and a slow loop still holds each statement's snapshot briefly. ` + "`ReadPageSize`" + ` 10000 starts there (memory does not
grow with the page).

**Projector catch-up.** With the upsert handler both sides spend their time in the handler's round trip
per event (and in PostgreSQL following the chain of versions of a row updated up to 1000 times in one
transaction: the log's appends put 1000 events of a stream in a row), so the ratio is near 1. With the
no-op handler the baseline is a single streaming SELECT with no transaction per page; any consumer that
checkpoints must page and commit. The diagnostic *hand-written loop: page, checkpoint row, commit* (four
round trips and a WAL flush per 1000 events, one after the other) shows that cost. The projector does not
wait for it: while a batch applies and commits, the events after it are read ahead on a second connection
and a third at the same time (when the projectors' connection budget has slots free; the second statement
skips the events of the first), up to 10,000 events per statement, and the next batches
take them if their committed checkpoint is where the read ahead starts (under the same lease); so reading
and committing overlap, and the page queries are a tenth as many. Its batch adds the lease lock (which
also sets the idle timeout and looks for parked retries), and the benchmark's ` + "`WaitFor`" + ` reads the checkpoint
once per batch. ` + "`BatchSize`" + ` 10000 spreads the batch's round trips over ten times as many events.

**Rebuild** truncates the read table and resets the checkpoint in one transaction, then the running
projector replays the whole log: its rate is that of the upsert catch-up.

**Changes made after the investigation** (measured in this file): the projector's lock query sets the idle
timeout and reports pending parked retries, and its checkpoint UPDATE reports whether events follow (five
statements per batch instead of seven); later the checkpoint UPDATE and the COMMIT went out together, with
the next batch's BEGIN when one follows at once (three round trips per batch under load, four from idle); ` + "`Append`" + ` without synchronous projections takes only the last row
back; transaction ids travel as binary ` + "`xid8`" + ` instead of through text casts; and projector batches commit
with ` + "`synchronous_commit`" + ` off unless ` + "`ProjectorConfig.DurableCommit`" + ` (no WAL flush wait per batch: a server
crash loses only whole batches, rows and checkpoint together, which the projector then re-applies). The
hand-written loops commit with the server's default (on); the *DurableCommit* diagnostic row is Conduit
under the same rule. The batch functions keep their generic plan (migration 15,
` + "`SET plan_cache_mode = force_generic_plan`" + `): PL/pgSQL chose, per session, custom plans for batches of a few appends, planning the whole
statement again at each batch (from raw pgx, 2 appends per call: about 600 µs of server CPU a call against 240 µs
with the generic plan; 4: 630 against 270); batches of 8 already had the generic plan, so the rows above at 8
and 32 writers did not move, but fewer concurrent writers (2 to 6 appends a batch) did.
`

// cpuSection is the CPU time per event of each row's two sides and its
// diagnostics (see cpu.go), when the server's was measured.
func (r report) cpuSection(p func(format string, args ...any)) {
	if !serverLocal || len(r.rows) == 0 {
		return
	}
	p("## CPU per event\n\n")
	p("What each variant cost the machine, beside how fast it went: CPU time per event written or read, in µs, of\n")
	p("the benchmark process (the Go client: Conduit or the raw pgx loop, the pool, the runtime) and of the\n")
	p("server's processes (backends, WAL writer, checkpointer, autovacuum: their time on a CPU, from\n")
	p("`/proc/PID/schedstat`), medians of the same runs as the results. Where a row is bound by the machine's\n")
	p("CPUs the throughput ratio follows the inverse of the CPU ratio; where it is bound by waits (a commit's\n")
	p("flush, a lock, a round trip, one batch at a time) it falls short of what its CPU time would allow: events/s\n")
	p("times µs/event is the share of a core in use. Noise moves these figures far less than throughput.\n\n")
	p("| Workload | Variant | Client µs/event | Server µs/event | Total | Baseline's total / this |\n")
	p("|---|---|---:|---:|---:|---:|\n")
	for _, row := range r.rows {
		base := row.raw.clientCPU + row.raw.serverCPU
		if base == 0 || row.conduit.clientCPU+row.conduit.serverCPU == 0 {
			continue
		}
		name := strings.ToLower(row.group) + ", " + row.name
		line := func(variant string, s stats) {
			total := s.clientCPU + s.serverCPU
			ratio := "–"
			if total > 0 {
				ratio = fmt.Sprintf("%.2f×", base/total)
			}
			p("| %s | %s | %.1f | %.1f | %.1f | %s |\n", name, variant, s.clientCPU, s.serverCPU, total, ratio)
		}
		line("Conduit", row.conduit)
		line("baseline", row.raw)
		for _, d := range row.diagnostics {
			line(d.name, d.s)
		}
	}
	p("\n")
}
