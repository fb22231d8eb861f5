package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/conduit-es/conduit"
)

// result is what a run measured and found.
type result struct {
	seed      uint64
	started   time.Time
	loadEnded time.Time

	appends, events, resends, conflicts, duplicates int64
	stored                                          int64
	faults                                          map[string]int64
	converged                                       time.Duration // from the end of the load to every projection caught up
	maxLag                                          int64         // the largest lag seen while converging
	rebuild                                         time.Duration
	checks                                          []check
}

type check struct {
	name   string
	ok     bool
	detail string
}

func (r *result) pass(name, detail string) { r.checks = append(r.checks, check{name, true, detail}) }
func (r *result) fail(name, detail string) { r.checks = append(r.checks, check{name, false, detail}) }

func (r *result) failed() bool {
	return slices.ContainsFunc(r.checks, func(c check) bool { return !c.ok })
}

// converge waits until every projection has passed the log's head, within
// o.converge.
func (s *soak) converge(ctx context.Context, r *result) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, s.o.converge)
	defer cancel()
	var head conduit.Position
	for {
		var err error
		if head, err = s.store.Head(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			r.fail("lag back to zero", "could not read the log's head: "+err.Error())
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	sample := time.NewTicker(250 * time.Millisecond)
	defer sample.Stop()
	for _, name := range s.names {
		waited := make(chan error, 1)
		go func() { waited <- s.store.WaitFor(ctx, name, head) }()
	wait:
		for {
			select {
			case err := <-waited:
				if err != nil {
					r.fail("lag back to zero", fmt.Sprintf("%s did not catch up within %s: %v", name, s.o.converge, err))
					return
				}
				break wait
			case <-sample.C:
				if st, err := s.store.ProjectionStatus(ctx, name); err == nil {
					r.maxLag = max(r.maxLag, st.LagEvents)
				}
			}
		}
	}
	r.converged = time.Since(start)
	r.pass("lag back to zero", fmt.Sprintf("every projection passed the head %s after %s (bound %s)",
		head, r.converged.Round(time.Millisecond), s.o.converge))
}

// check verifies what the run promised.
func (s *soak) check(ctx context.Context, r *result) {
	if err := s.admin.QueryRow(ctx, `SELECT count(*) FROM conduit.events`).Scan(&r.stored); err != nil {
		r.fail("read the log", err.Error())
		return
	}

	// Every acknowledged append is stored, at the version Append reported.
	s.mu.Lock()
	ids := make([]uuid.UUID, 0, len(s.acked))
	versions := make([]int64, 0, len(s.acked))
	for id, v := range s.acked {
		ids = append(ids, uuid.MustParse(id))
		versions = append(versions, v)
	}
	s.mu.Unlock()
	var missing, moved int64
	err := s.admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE e.event_id IS NULL),
			count(*) FILTER (WHERE e.event_id IS NOT NULL AND e.stream_version <> a.version)
		  FROM unnest($1::uuid[], $2::bigint[]) AS a(id, version)
		  LEFT JOIN conduit.events e ON e.event_id = a.id`, ids, versions).Scan(&missing, &moved)
	switch {
	case err != nil:
		r.fail("acknowledged appends stored", err.Error())
	case missing > 0 || moved > 0:
		r.fail("acknowledged appends stored", fmt.Sprintf("%d of %d acknowledged events missing, %d at another version", missing, len(ids), moved))
	default:
		r.pass("acknowledged appends stored", fmt.Sprintf("all %d acknowledged events, at the versions reported", len(ids)))
	}

	for _, name := range s.names {
		s.checkProjection(ctx, r, name)
	}

	// A rebuild of the first projection gives the same read tables.
	name := s.names[0]
	before, err := s.totals(ctx, name)
	if err != nil {
		r.fail("read tables equal a rebuild", err.Error())
		return
	}
	start := time.Now()
	if err := s.store.RebuildProjection(ctx, name); err != nil {
		r.fail("read tables equal a rebuild", err.Error())
		return
	}
	head, err := s.store.Head(ctx)
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, s.o.rebuild)
		err = s.store.WaitFor(wctx, name, head)
		cancel()
	}
	r.rebuild = time.Since(start)
	after, terr := s.totals(ctx, name)
	switch {
	case err != nil || terr != nil:
		r.fail("read tables equal a rebuild", fmt.Sprintf("rebuild of %s: %v %v", name, err, terr))
	case before != after:
		r.fail("read tables equal a rebuild", fmt.Sprintf("%s differs after its rebuild", name))
	default:
		r.pass("read tables equal a rebuild", fmt.Sprintf("%s rebuilt in %s by the running projectors: same totals", name, r.rebuild.Round(time.Millisecond)))
		s.checkProjection(ctx, r, name)
	}
}

// checkProjection checks one projection's read tables against the log.
func (s *soak) checkProjection(ctx context.Context, r *result, name string) {
	var applied, distinct, unapplied, outOfOrder, wrongTotals int64
	err := s.admin.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM `+appliedTable(name)+`),
		(SELECT count(DISTINCT event_id) FROM `+appliedTable(name)+`),
		(SELECT count(*) FROM conduit.events e WHERE NOT EXISTS (
			SELECT 1 FROM `+appliedTable(name)+` a WHERE a.event_id = e.event_id)),
		(SELECT count(*) FROM (
			SELECT stream_version, lag(stream_version, 1, 0::bigint) OVER (PARTITION BY stream_id ORDER BY seq) AS prev
			  FROM `+appliedTable(name)+`) x WHERE stream_version <> prev + 1),
		(SELECT count(*) FROM (
			(SELECT stream_id, count(*), max(stream_version), sum((data->>'amount')::bigint)
			   FROM conduit.events GROUP BY stream_id
			 EXCEPT SELECT stream_id, events, last_version, amount FROM `+totalsTable(name)+`)
			UNION ALL
			(SELECT stream_id, events, last_version, amount FROM `+totalsTable(name)+`
			 EXCEPT SELECT stream_id, count(*), max(stream_version), sum((data->>'amount')::bigint)
			   FROM conduit.events GROUP BY stream_id)) d)`).
		Scan(&applied, &distinct, &unapplied, &outOfOrder, &wrongTotals)
	if err != nil {
		r.fail(name+": exactly once", err.Error())
		return
	}
	if applied == distinct && unapplied == 0 && distinct == r.stored {
		r.pass(name+": exactly once", fmt.Sprintf("%d events applied once each", applied))
	} else {
		r.fail(name+": exactly once", fmt.Sprintf("%d applications of %d distinct events; %d of %d stored events never applied",
			applied, distinct, unapplied, r.stored))
	}
	if outOfOrder == 0 {
		r.pass(name+": stream order", "every stream applied in version order from 1")
	} else {
		r.fail(name+": stream order", fmt.Sprintf("%d applications out of version order", outOfOrder))
	}
	if wrongTotals == 0 {
		r.pass(name+": read tables equal the log", "per-stream count, last version and sum match")
	} else {
		r.fail(name+": read tables equal the log", fmt.Sprintf("%d per-stream totals differ", wrongTotals))
	}
}

// totals returns a projection's totals table as text, to compare.
func (s *soak) totals(ctx context.Context, name string) (string, error) {
	var t string
	err := s.admin.QueryRow(ctx, `SELECT COALESCE(string_agg(format('%s %s %s %s', stream_id, events, last_version, amount), ';'
		ORDER BY stream_id), '') FROM `+totalsTable(name)).Scan(&t)
	return t, err
}

// collect gathers the counters and checks that no connection is left
// busy: the writers' pool has nothing acquired, and no session of the soak
// database stays idle in a transaction.
func (s *soak) collect(ctx context.Context, r *result) {
	r.appends, r.events = s.counts.appends.Load(), s.counts.events.Load()
	r.resends, r.conflicts, r.duplicates = s.counts.resends.Load(), s.counts.conflicts.Load(), s.counts.duplicates.Load()
	r.faults = map[string]int64{}
	s.counts.faults.Range(func(k, v any) bool {
		r.faults[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	if n := s.pool.Stat().AcquiredConns(); n != 0 {
		r.fail("connections back to baseline", fmt.Sprintf("%d writer connections still acquired", n))
		return
	}
	deadline := time.Now().Add(2 * s.o.lease)
	for {
		var stuck int64
		var what string
		err := s.admin.QueryRow(ctx, `SELECT count(*), COALESCE(string_agg(application_name || ': ' || state, ', '), '')
			FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
			AND state IN ('idle in transaction', 'idle in transaction (aborted)')`).Scan(&stuck, &what)
		if err == nil && stuck == 0 {
			r.pass("connections back to baseline", fmt.Sprintf("writer pool: 0 acquired of %d open; no session idle in a transaction",
				s.pool.Stat().TotalConns()))
			return
		}
		if time.Now().After(deadline) {
			r.fail("connections back to baseline", fmt.Sprintf("%d sessions idle in a transaction: %s %v", stuck, what, err))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// markdown renders the result.
func (r *result) markdown(o options) string {
	var b strings.Builder
	load := r.loadEnded.Sub(r.started)
	if r.loadEnded.IsZero() {
		load = time.Since(r.started)
	}
	fmt.Fprintf(&b, "### Soak run of %s\n\n", r.started.UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "`conduit-soak -duration %s -writers %d -streams %d -rate %d -projections %d -instances %d -lease %s -fault-every %s -slow-every %d -slow-max %s -restart=%t -seed %d`\n\n",
		o.duration, o.writers, o.streams, o.rate, o.projections, o.instances, o.lease, o.faultEvery, o.slowEvery, o.slowMax, o.restart, r.seed)
	fmt.Fprintf(&b, "| Figure | Value |\n|---|---:|\n")
	fmt.Fprintf(&b, "| load | %s |\n", load.Round(time.Second))
	fmt.Fprintf(&b, "| appends acknowledged | %d (%.0f/s) |\n", r.appends, float64(r.appends)/max(load.Seconds(), 1))
	fmt.Fprintf(&b, "| events acknowledged / stored | %d / %d |\n", r.events, r.stored)
	fmt.Fprintf(&b, "| resends after an unknown outcome | %d |\n", r.resends)
	fmt.Fprintf(&b, "| of which found already stored (duplicate) | %d |\n", r.duplicates)
	fmt.Fprintf(&b, "| version conflicts (Exactly, refused) | %d |\n", r.conflicts)
	kinds := make([]string, 0, len(r.faults))
	for k := range r.faults {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		fmt.Fprintf(&b, "| faults: %s | %d |\n", k, r.faults[k])
	}
	fmt.Fprintf(&b, "| largest lag while converging | %d events |\n", r.maxLag)
	fmt.Fprintf(&b, "| time to converge after the load | %s |\n", r.converged.Round(time.Millisecond))
	fmt.Fprintf(&b, "| rebuild of one projection (%d events) | %s |\n\n", r.stored, r.rebuild.Round(time.Millisecond))
	fmt.Fprintf(&b, "| Check | Result |\n|---|---|\n")
	for _, c := range r.checks {
		verdict := "pass"
		if !c.ok {
			verdict = "**FAIL**"
		}
		fmt.Fprintf(&b, "| %s | %s: %s |\n", c.name, verdict, c.detail)
	}
	b.WriteString("\n")
	return b.String()
}
