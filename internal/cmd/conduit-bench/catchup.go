package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// benchCatchUpNoop: a conduit.Projector with a no-op handler catching up
// with the shared global log from its start, against one SELECT streaming
// the whole log (the raw global read of the read workload), and
// diagnostic variants that split the projector's cost. A few seconds per
// run. Every run uses a fresh projection name.
func benchCatchUpNoop(ctx context.Context, srv *server, out *results) error {
	o := srv.opts
	c, twoConns, oneConn, err := newCatchUpStores(ctx, srv)
	if err != nil {
		return err
	}
	defer c.close()
	defer twoConns.Close()
	defer oneConn.Close()
	noop := []variant{
		c.projectorVariant("conduit projector, no-op handler", noopHandler, conduit.BatchSizeDefault, false),
		rawReadVariant("raw global read", c.pool, o.readEvents, `SELECT `+rawColumns+`
			FROM conduit.events e ORDER BY e.transaction_id, e.global_position`),
	}
	if o.diagnose {
		noop = append(noop,
			c.projectorVariant("conduit projector, no-op handler, BatchSize 10000", noopHandler, 10_000, false),
			c.projectorVariant("conduit projector, no-op handler, DurableCommit", noopHandler, conduit.BatchSizeDefault, true),
			c.withStore(twoConns, "_two_conns").projectorVariant("conduit projector, no-op handler, MaxProjectorConns 2 (one read-ahead statement at a time)",
				noopHandler, conduit.BatchSizeDefault, false),
			c.withStore(oneConn, "_one_conn").projectorVariant("conduit projector, no-op handler, MaxProjectorConns 1 (no read ahead)",
				noopHandler, conduit.BatchSizeDefault, false),
			c.loopVariant("hand-written loop: page, checkpoint row, commit (no upserts)", noopHandler, conduit.BatchSizeDefault))
	}
	st, err := compare(ctx, o, "catch-up, no-op handler", 1, 0, noop...)
	if err != nil {
		return err
	}
	noopRow := row{group: "Projector catch-up", name: fmt.Sprintf("%s events, no-op handler", rate(float64(o.readEvents))),
		baseline: "raw global read: one SELECT … ORDER BY (transaction_id, global_position) streaming every row",
		conduit:  st[0], raw: st[1], target: 0.9, runs: o.runs}
	for i := 2; i < len(noop); i++ {
		noopRow.diagnostics = append(noopRow.diagnostics, diagnostic{noop[i].name, st[i]})
	}
	out.rows = append(out.rows, noopRow)
	return nil
}

// newCatchUpStores connects to the shared log for the catch-up workloads:
// a store whose projectors may take three connections (one for the batch,
// two for reading ahead while it commits), and for diagnostic variants two
// more stores on the same pool: one with a budget of 2 (one read-ahead
// statement at a time), one with the default budget for a pool of 4, one
// connection, so no read ahead.
func newCatchUpStores(ctx context.Context, srv *server) (c *catchUp, two, one *conduit.Store, err error) {
	if c, err = newCatchUp(ctx, srv, &conduit.Config{MaxProjectorConns: 3}); err != nil {
		return nil, nil, nil, err
	}
	if two, err = conduit.NewStore(c.pool, &conduit.Config{MaxProjectorConns: 2}); err == nil {
		one, err = conduit.NewStore(c.pool, nil)
	}
	if err != nil {
		c.close()
		return nil, nil, nil, err
	}
	return c, two, one, nil
}

// benchCatchUp: a conduit.Projector catching up with the shared global log
// from its start, against hand-written pgx loops doing the same work; then
// rebuilds of the projection, timed.
//
//   - Upsert handler: one INSERT … ON CONFLICT (stream_id) DO UPDATE per event
//     into a read table, against a loop that reads a page of BatchSize events
//     below the safe horizon with the projector's query shape, applies the
//     same upserts in one transaction, writes a checkpoint row and commits.
//   - Batch upsert handler: a conduit.BatchProjection writing a batch's
//     events with one multi-row upsert (counts per stream from unnest),
//     against the same loop doing the same multi-row upsert per page.
//   - Rebuild: conduit.rebuild_projection on the caught-up upsert
//     projections (per event, and batch) while their projector runs, then
//     the replay to caught up.
//
// Every run uses a fresh projection name and fresh tables.
func benchCatchUp(ctx context.Context, srv *server, out *results) error {
	o := srv.opts
	c, err := newCatchUp(ctx, srv, &conduit.Config{MaxProjectorConns: 3})
	if err != nil {
		return err
	}
	defer c.close()

	// Upsert handler: a minute or more per run, so no warm-up run (the log
	// was just read in full) and fewer runs.
	upsert := []variant{
		c.projectorVariant("conduit projector, upsert handler", upsertHandler, conduit.BatchSizeDefault, false),
		c.loopVariant("hand-written loop", upsertHandler, conduit.BatchSizeDefault),
	}
	uo := o
	uo.warmup, uo.runs = 0, o.catchUpRuns
	st, err := compare(ctx, uo, "catch-up, upsert handler", 1, 0, upsert...)
	if err != nil {
		return err
	}
	upsertRow := row{group: "Projector catch-up", name: fmt.Sprintf("%s events, upsert handler", rate(float64(o.readEvents))),
		baseline: "hand-written pgx loop: page of 1000 events below the safe horizon (the projector's query shape), " +
			"the same upserts and a checkpoint row in one transaction",
		conduit: st[0], raw: st[1], target: 0.8, runs: uo.runs}

	// Batch upsert handler: seconds per run.
	batch := []variant{
		c.projectorVariant("conduit projector, batch upsert handler", batchUpsertHandler, conduit.BatchSizeDefault, false),
		c.loopVariant("hand-written loop, batch upserts", batchUpsertHandler, conduit.BatchSizeDefault),
	}
	st, err = compare(ctx, o, "catch-up, batch upsert handler", 1, 0, batch...)
	if err != nil {
		return err
	}
	batchRow := row{group: "Projector catch-up", name: fmt.Sprintf("%s events, batch upsert handler", rate(float64(o.readEvents))),
		baseline: "hand-written pgx loop: page of 1000 events below the safe horizon, one multi-row upsert of the " +
			"page's counts per stream (the handler's statement) and a checkpoint row in one transaction",
		conduit: st[0], raw: st[1], target: 0.8, runs: o.runs}
	out.rows = append(out.rows, upsertRow, batchRow)

	// Rebuild the last upsert projections, which are caught up.
	for _, h := range []handlerKind{upsertHandler, batchUpsertHandler} {
		rebuilds, err := c.rebuilds(ctx, c.last[h], o.rebuildRuns)
		if err != nil {
			return err
		}
		out.timings = append(out.timings, timingRow{
			name:   fmt.Sprintf("rebuild of the %s projection over %s events", h, rate(float64(o.readEvents))),
			events: o.readEvents, elapsed: rebuilds})
	}
	return nil
}

// benchOnline: the online rebuild (see onlineRebuild), over the shared log.
// It runs last: it appends to the log.
func benchOnline(ctx context.Context, srv *server, out *results) error {
	swaps := &swapLog{}
	c, err := newCatchUp(ctx, srv, &conduit.Config{Logger: slog.New(swaps)})
	if err != nil {
		return err
	}
	defer c.close()
	return c.onlineRebuild(ctx, out, swaps)
}

// newCatchUp connects to the shared log for the projector workloads.
func newCatchUp(ctx context.Context, srv *server, cfg *conduit.Config) (*catchUp, error) {
	db, err := srv.logDB(ctx)
	if err != nil {
		return nil, err
	}
	// The projector's batches and its read ahead, WaitFor's checkpoint reads,
	// and the baseline's transaction; the listener has its own connection.
	pool, err := db.pool(ctx, 4)
	if err != nil {
		return nil, err
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS bench.checkpoints (
		name text PRIMARY KEY, transaction_id bigint NOT NULL, global_position bigint NOT NULL)`); err != nil {
		pool.Close()
		return nil, err
	}
	store, err := conduit.NewStore(pool, cfg)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &catchUp{srv: srv, pool: pool, store: store, events: srv.opts.readEvents, head: srv.lastPosition,
		last: map[handlerKind]*benchProjection{}}, nil
}

func (c *catchUp) close() {
	c.store.Close()
	c.pool.Close()
}

// handlerKind is what a benchmark projection does per event.
type handlerKind int

const (
	noopHandler        handlerKind = iota
	upsertHandler                  // one upsert per event
	batchUpsertHandler             // a BatchProjection: one multi-row upsert per batch
)

func (h handlerKind) String() string {
	return [...]string{"noop", "upsert", "batch upsert"}[h]
}

// The columns as Conduit's queries read them. ORDER BY names the table's
// columns (e.…): the output column transaction_id is the bigint cast.
const rawColumns = `e.global_position, e.transaction_id::text::bigint AS transaction_id, e.stream_id,
		e.stream_version, e.event_id, e.event_type, e.data, e.metadata, e.recorded_at`

// pageQuery is the projector's page query (EventListForProjection with no
// type filter, which is EventListAll): the events after a position, below
// the safe horizon, in log order.
const pageQuery = `SELECT ` + rawColumns + `
	  FROM conduit.events e
	 WHERE (e.transaction_id, e.global_position) > ($1::bigint::text::xid8, $2::bigint)
	   AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())
	 ORDER BY e.transaction_id, e.global_position
	 LIMIT $3`

type catchUp struct {
	srv    *server
	pool   *pgxpool.Pool
	store  *conduit.Store
	events int
	head   conduit.Position // the log's last event
	tag    string           // added to projection names

	// last is the last conduit projection of each upsert kind, caught up
	// (for the rebuilds).
	last map[handlerKind]*benchProjection
}

// benchProjection is the projection under test: an upsert per event into
// its read table, a multi-row upsert per batch, or nothing.
type benchProjection struct {
	name, table string
	kind        handlerKind
	sql         string
}

func newBenchProjection(name string, kind handlerKind) *benchProjection {
	p := &benchProjection{name: name, kind: kind}
	switch kind {
	case upsertHandler:
		p.table = "bench." + name
		p.sql = `INSERT INTO ` + p.table + ` AS t (stream_id, events) VALUES ($1, 1)
			ON CONFLICT (stream_id) DO UPDATE SET events = t.events + 1`
	case batchUpsertHandler:
		p.table = "bench." + name
	}
	return p
}

// projection is p as the projector takes it: a BatchProjection for the
// batch kind.
func (p *benchProjection) projection() conduit.Projection {
	if p.kind == batchUpsertHandler {
		return batchBenchProjection{p}
	}
	return p
}

// batchBenchProjection is a batch upsert benchProjection.
type batchBenchProjection struct{ *benchProjection }

func (p batchBenchProjection) ApplyBatch(ctx context.Context, tx pgx.Tx, events []conduit.Event) error {
	return p.applyBatch(ctx, tx, events)
}

// applyBatch writes events with the batch kind's one statement, into the
// table conduit.Table names (the shadow copy during an online rebuild).
func (p *benchProjection) applyBatch(ctx context.Context, tx pgx.Tx, events []conduit.Event) error {
	streams := make([]string, len(events))
	for i, e := range events {
		streams[i] = e.StreamID
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+conduit.Table(ctx, p.table)+` AS t (stream_id, events)
		SELECT s, count(*) FROM unnest($1::text[]) AS s GROUP BY s
		ON CONFLICT (stream_id) DO UPDATE SET events = t.events + EXCLUDED.events`, streams)
	return err
}

func (p *benchProjection) Name() string { return p.name }

func (p *benchProjection) ReadTables() []string {
	if p.table == "" {
		return nil
	}
	return []string{p.table}
}

func (p *benchProjection) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	switch p.kind {
	case upsertHandler:
		_, err := tx.Exec(ctx, p.sql, e.StreamID)
		return err
	case batchUpsertHandler:
		return p.applyBatch(ctx, tx, []conduit.Event{e})
	}
	return nil
}

// prepare makes the read table, dropping a leftover one.
func (p *benchProjection) prepare(ctx context.Context, pool *pgxpool.Pool) error {
	if p.table == "" {
		return nil
	}
	_, err := pool.Exec(ctx, `DROP TABLE IF EXISTS `+p.table+`;
		CREATE TABLE `+p.table+` (stream_id text PRIMARY KEY, events bigint NOT NULL)`)
	return err
}

// check verifies that the read table counts every event once.
func (p *benchProjection) check(ctx context.Context, pool *pgxpool.Pool, want int) error {
	if p.table == "" {
		return nil
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT COALESCE(sum(events), 0) FROM `+p.table).Scan(&n); err != nil {
		return err
	}
	if n != want {
		return fmt.Errorf("%s: read table counts %d events, want %d", p.name, n, want)
	}
	return nil
}

// dropOld drops a previous run's read table, keeping the database small.
func (c *catchUp) dropOld(ctx context.Context, p *benchProjection) {
	if p != nil && p.table != "" {
		if _, err := c.pool.Exec(ctx, `DROP TABLE IF EXISTS `+p.table); err != nil {
			log.Printf("drop %s: %v", p.table, err)
		}
	}
}

// withStore is c with projectors on store instead.
// tag sets its projections' names apart.
func (c *catchUp) withStore(store *conduit.Store, tag string) *catchUp {
	d := *c
	d.store, d.tag = store, tag
	return &d
}

// projectorVariant times a new projector from Run to caught up (its
// checkpoint at the log's last event, seen through Store.WaitFor).
func (c *catchUp) projectorVariant(name string, h handlerKind, batchSize int, durable bool) variant {
	kind := strings.ReplaceAll(h.String(), " ", "_")
	if durable {
		kind += "_durable"
	}
	kind += c.tag
	var prev *benchProjection
	return variant{name: name, start: func(ctx context.Context, run string, _ int) ([]func(context.Context) (int, error), error) {
		if prev != c.last[h] {
			c.dropOld(ctx, prev) // kept for the rebuilds while it is the last
		}
		p := newBenchProjection(fmt.Sprintf("cu_%s_%d_%s", kind, batchSize, run), h)
		if err := p.prepare(ctx, c.pool); err != nil {
			return nil, err
		}
		prev = p
		return []func(context.Context) (int, error){func(ctx context.Context) (int, error) {
			pr, err := conduit.NewProjector(c.store, p.projection(), &conduit.ProjectorConfig{BatchSize: batchSize, DurableCommit: durable})
			if err != nil {
				return 0, err
			}
			stop, err := runProjector(ctx, pr)
			if err != nil {
				return 0, err
			}
			err = c.waitCaughtUp(ctx, p.name)
			if serr := stop(); err == nil {
				err = serr
			}
			if err != nil {
				return 0, err
			}
			if h != noopHandler && batchSize == conduit.BatchSizeDefault && !durable {
				if old := c.last[h]; old != nil && old != p {
					c.dropOld(ctx, old)
				}
				c.last[h] = p
			}
			return c.events, p.check(ctx, c.pool, c.events)
		}}, nil
	}}
}

// runProjector starts pr.Run and returns a func that stops it and returns
// Run's error.
func runProjector(ctx context.Context, pr *conduit.Projector) (stop func() error, err error) {
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- pr.Run(runCtx) }()
	return func() error {
		cancel()
		return <-done
	}, nil
}

// waitCaughtUp waits until the projection has passed the log's last event,
// with a generous deadline (a stuck projector fails the run, not the
// machine's patience).
func (c *catchUp) waitCaughtUp(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	return c.store.WaitFor(ctx, name, c.head)
}

// loopVariant is the hand-written baseline: per transaction, one page of
// batchSize events below the safe horizon, the upserts (if any), a
// checkpoint row; until a short page.
func (c *catchUp) loopVariant(name string, h handlerKind, batchSize int) variant {
	var prev *benchProjection
	return variant{name: name, start: func(ctx context.Context, run string, _ int) ([]func(context.Context) (int, error), error) {
		c.dropOld(ctx, prev)
		p := newBenchProjection(fmt.Sprintf("raw_%s_%s", strings.ReplaceAll(h.String(), " ", "_"), run), h)
		if err := p.prepare(ctx, c.pool); err != nil {
			return nil, err
		}
		prev = p
		return []func(context.Context) (int, error){func(ctx context.Context) (int, error) {
			var after conduit.Position
			total := 0
			for {
				n := 0
				err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
					rows, err := tx.Query(ctx, pageQuery, int64(after.TransactionID), after.GlobalPosition, batchSize)
					if err != nil {
						return err
					}
					events, err := pgx.CollectRows(rows, scanEvent)
					if err != nil {
						return err
					}
					if h == batchUpsertHandler && len(events) > 0 {
						if err := p.applyBatch(ctx, tx, events); err != nil {
							return err
						}
					} else {
						for _, e := range events {
							if err := p.Apply(ctx, tx, e); err != nil {
								return err
							}
						}
					}
					if n = len(events); n > 0 {
						after = events[n-1].Position
					}
					_, err = tx.Exec(ctx, `INSERT INTO bench.checkpoints AS c VALUES ($1, $2, $3)
						ON CONFLICT (name) DO UPDATE SET transaction_id = $2, global_position = $3`,
						p.name, int64(after.TransactionID), after.GlobalPosition)
					return err
				})
				if err != nil {
					return 0, err
				}
				total += n
				if n < batchSize {
					break
				}
			}
			if total != c.events {
				return 0, fmt.Errorf("%s: applied %d events, want %d", name, total, c.events)
			}
			return total, p.check(ctx, c.pool, c.events)
		}}, nil
	}}
}

func scanEvent(row pgx.CollectableRow) (conduit.Event, error) {
	var e conduit.Event
	err := row.Scan(&e.Position.GlobalPosition, &e.Position.TransactionID, &e.StreamID, &e.StreamVersion,
		&e.ID, &e.Type, &e.Data, &e.Metadata, &e.RecordedAt)
	return e, err
}

// rebuilds times runs rebuilds of p, a caught-up upsert projection: while
// its projector runs, RebuildProjection (conduit.rebuild_projection:
// truncate the read table, reset the checkpoint) and the replay to caught
// up.
func (c *catchUp) rebuilds(ctx context.Context, p *benchProjection, runs int) ([]time.Duration, error) {
	if p == nil {
		return nil, errors.New("rebuild: no caught-up upsert projection")
	}
	defer c.dropOld(ctx, p)
	pr, err := conduit.NewProjector(c.store, p.projection(), nil)
	if err != nil {
		return nil, err
	}
	stop, err := runProjector(ctx, pr)
	if err != nil {
		return nil, err
	}
	var out []time.Duration
	for i := range runs {
		begin := time.Now()
		err = c.store.RebuildProjection(ctx, p.name)
		if err == nil {
			err = c.waitCaughtUp(ctx, p.name)
		}
		if err != nil {
			break
		}
		d := time.Since(begin)
		if err = p.check(ctx, c.pool, c.events); err != nil {
			break
		}
		out = append(out, d)
		log.Printf("rebuild %d: %s (%.0f events/s)", i+1, d.Round(time.Millisecond), float64(c.events)/d.Seconds())
	}
	if serr := stop(); err == nil {
		err = serr
	}
	return out, err
}
