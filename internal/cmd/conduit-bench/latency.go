package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// End-to-end latency: from Store.Append's return in this process to the
// read-table row committed by a projector in another process (this binary,
// re-executed as a child with childCommand).
//
// Method. The child runs a conduit.Projector whose handler inserts one row
// per event (event id, clock_timestamp()). Next to it the child watches its
// own commits: each applied event is queued, and a goroutine calls
// Store.WaitFor(projection, last queued position) — woken in-process right
// after the batch's COMMIT returns, it then reads the checkpoint once — and
// prints every event it covered with the wall-clock time (Unix ns) at which
// WaitFor returned. The parent notes the wall-clock time right after each
// Append returns. Both processes and the PostgreSQL server run on this
// machine and read the same system clock, so the difference is the latency,
// overstated by WaitFor's one checkpoint read (about 0.1–0.3 ms). The
// handler's clock_timestamp() against the same start gives a lower bound
// (the row written, not yet committed), reported beside it.
const childCommand = "child-projector"

// latencyMode is one wake-up mechanism under test.
type latencyMode struct {
	name      string // for the report
	key       string // event type, projection and table name suffix
	pollOnly  bool   // the child's projector: PollOnly with pollEvery
	pollEvery time.Duration
	notify    bool          // the appending store sends NOTIFY (not DisableNotify)
	batch     bool          // the child's projection is a BatchProjection
	target    time.Duration // p99 target under light load
	p50Target time.Duration // p50 target of the closed loop (8 writers)
}

// latencyLoad is one way of appending.
type latencyLoad struct {
	name    string
	writers int
	perSec  int // per writer; 0: closed loop
	light   bool
}

func benchLatency(ctx context.Context, srv *server, out *results) error {
	o := srv.opts
	db, err := srv.freshDB(ctx, "latency")
	if err != nil {
		return err
	}
	defer db.drop()
	modes := []latencyMode{
		{name: "LISTEN/NOTIFY (default: NOTIFY after commit, coalesced; projector PollInterval 1 s)", key: "notify",
			notify: true, target: 10 * time.Millisecond},
		{name: "LISTEN/NOTIFY, batch handler (one INSERT per batch)", key: "notify_batch",
			notify: true, batch: true, p50Target: 10 * time.Millisecond},
		{name: "polling only (appender DisableNotify; projector PollOnly, PollInterval 100 ms)", key: "poll",
			pollOnly: true, pollEvery: 100 * time.Millisecond},
	}
	loads := []latencyLoad{
		{name: "light: 1 writer, 100 appends/s", writers: 1, perSec: 100, light: true},
		{name: "8 writers, closed loop", writers: 8},
	}
	pool, err := db.pool(ctx, 9) // 8 writers and the notifier
	if err != nil {
		return err
	}
	defer pool.Close()
	for _, m := range modes {
		if _, err := pool.Exec(ctx, `CREATE TABLE bench.e2e_`+m.key+` (
			event_id uuid PRIMARY KEY, applied_at timestamptz NOT NULL)`); err != nil {
			return err
		}
	}
	stores := map[string]*conduit.Store{}
	for _, m := range modes {
		s, err := conduit.NewStore(pool, &conduit.Config{DisableNotify: !m.notify})
		if err != nil {
			return err
		}
		defer s.Close()
		stores[m.key] = s
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	runs := min(o.runs, 5)
	for _, load := range loads {
		all := make([][]latencySample, len(modes))
		for round := -1; round < runs; round++ { // round -1: warm-up, not counted
			for k := range modes {
				i := (k + max(round, 0)) % len(modes)
				m := modes[i]
				d := o.latencyRun
				if round < 0 {
					d = o.warmup
				}
				s, err := latencyRun(ctx, db, pool, exe, stores[m.key], m, load, d)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", load.name, m.key, err)
				}
				if round >= 0 {
					all[i] = append(all[i], s)
				}
			}
		}
		line := "latency, " + load.name + ":"
		for i, m := range modes {
			r := summarizeLatency(all[i])
			r.load, r.mode = load.name, m.name
			if load.light {
				r.target = m.target // the target is for light load only
			} else {
				r.p50Target = m.p50Target
			}
			out.latency = append(out.latency, r)
			line += fmt.Sprintf("  %s p50 %s p99 %s (%.0f/s)", m.key, ms(r.visible.p50), ms(r.visible.p99), r.rate)
		}
		log.Print(line)
	}
	return nil
}

// latencySample is one run's result.
type latencySample struct {
	rate             float64
	drain            time.Duration   // from the last append's return to the child's last report
	visible, applied []time.Duration // sorted
}

func summarizeLatency(runs []latencySample) latencyRow {
	var r latencyRow
	vis := make([]sample, len(runs))
	app := make([]sample, len(runs))
	drains := make([]sample, len(runs))
	for i, s := range runs {
		drains[i] = sample{p50: s.drain}
		vis[i] = sample{rate: s.rate, p50: percentile(s.visible, 0.5), p99: percentile(s.visible, 0.99)}
		app[i] = sample{p50: percentile(s.applied, 0.5), p99: percentile(s.applied, 0.99)}
		r.samples += len(s.visible)
		if len(s.visible) > 0 {
			r.max = max(r.max, s.visible[len(s.visible)-1])
		}
	}
	r.visible, r.applied = summarize(vis), summarize(app)
	r.drain = summarize(drains).p50
	r.rate = r.visible.rate
	return r
}

// latencyRun starts a child projector for mode m, appends under load for d,
// waits until the child has reported every appended event, stops the child
// and computes the latencies.
func latencyRun(ctx context.Context, db *benchDB, pool *pgxpool.Pool, exe string, store *conduit.Store,
	m latencyMode, load latencyLoad, d time.Duration) (latencySample, error) {
	url, err := dbURL(db)
	if err != nil {
		return latencySample{}, err
	}
	args := []string{childCommand, "-db", url, "-name", "e2e_" + m.key, "-type", "e2e_" + m.key,
		"-table", "bench.e2e_" + m.key}
	if m.pollOnly {
		args = append(args, "-poll-only", "-poll-interval", m.pollEvery.String())
	}
	if m.batch {
		args = append(args, "-batch")
	}
	ch, err := startChild(ctx, exe, args)
	if err != nil {
		return latencySample{}, err
	}
	defer ch.stop() //nolint:errcheck

	type sent struct {
		id uuid.UUID
		at int64 // Unix ns, right after Append returned
	}
	var (
		mu    sync.Mutex
		sents []sent
		wg    sync.WaitGroup
		errs  = make([]error, load.writers)
	)
	begin := time.Now()
	deadline := begin.Add(d)
	stamp := begin.UnixNano()
	for w := range load.writers {
		wg.Go(func() {
			stream := fmt.Sprintf("e2e-%s-%d-w%d", m.key, stamp, w)
			var tick *time.Ticker
			if load.perSec > 0 {
				tick = time.NewTicker(time.Second / time.Duration(load.perSec))
				defer tick.Stop()
			}
			var local []sent
			var buf []byte
			for v := int64(0); time.Now().Before(deadline) && ctx.Err() == nil; v++ {
				if tick != nil {
					select {
					case <-tick.C:
					case <-ctx.Done():
					}
				}
				id, err := uuid.NewV7()
				if err != nil {
					errs[w] = err
					return
				}
				buf = payload(buf, w, int(v))
				e := conduit.EventData{ID: id, Type: "e2e_" + m.key, Data: buf}
				if _, err := store.Append(ctx, stream, conduit.Exactly(v), e); err != nil {
					errs[w] = err
					return
				}
				local = append(local, sent{id, time.Now().UnixNano()})
			}
			mu.Lock()
			sents = append(sents, local...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(begin)
	if err := errors.Join(errs...); err != nil {
		return latencySample{}, err
	}
	ids := make([]uuid.UUID, len(sents))
	for i, s := range sents {
		ids[i] = s.id
	}
	seen, err := ch.waitFor(ctx, ids, 10*time.Second+2*m.pollEvery)
	if err != nil {
		return latencySample{}, err
	}
	drain := time.Since(begin) - elapsed
	if err := ch.stop(); err != nil {
		return latencySample{}, err
	}

	table := "bench.e2e_" + m.key
	applied := map[uuid.UUID]int64{}
	rows, err := pool.Query(ctx, `SELECT event_id, (extract(epoch FROM applied_at) * 1000000)::bigint FROM `+table)
	if err != nil {
		return latencySample{}, err
	}
	var id uuid.UUID
	var us int64
	if _, err := pgx.ForEachRow(rows, []any{&id, &us}, func() error { applied[id] = us * 1000; return nil }); err != nil {
		return latencySample{}, err
	}
	if _, err := pool.Exec(ctx, `TRUNCATE `+table); err != nil {
		return latencySample{}, err
	}
	s := latencySample{rate: float64(len(sents)) / elapsed.Seconds(), drain: drain}
	for _, x := range sents {
		s.visible = append(s.visible, time.Duration(seen[x.id]-x.at))
		a, ok := applied[x.id]
		if !ok {
			return latencySample{}, fmt.Errorf("event %s: no row in %s", x.id, table)
		}
		s.applied = append(s.applied, time.Duration(a-x.at))
	}
	slices.Sort(s.visible)
	slices.Sort(s.applied)
	return s, nil
}

// dbURL is the server URL with the database's name.
func dbURL(db *benchDB) (string, error) {
	u, err := url.Parse(db.srv.opts.url)
	if err != nil {
		return "", err
	}
	u.Path = "/" + db.name
	return u.String(), nil
}

// child is a running child projector process.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready chan struct{}
	exit  chan error

	mu      sync.Mutex
	seen    map[uuid.UUID]int64
	changed chan struct{} // signalled (capacity 1) when seen grows
	stopped bool
	exitErr error
}

func startChild(ctx context.Context, exe string, args []string) (*child, error) {
	cmd := exec.Command(exe, args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, stdin: stdin, ready: make(chan struct{}), exit: make(chan error, 1),
		seen: map[uuid.UUID]int64{}, changed: make(chan struct{}, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if line == "ready" {
				close(c.ready)
				continue
			}
			idText, atText, ok := strings.Cut(line, " ")
			id, err1 := uuid.Parse(idText)
			at, err2 := strconv.ParseInt(atText, 10, 64)
			if !ok || err1 != nil || err2 != nil {
				log.Printf("child: unexpected output %q", line)
				continue
			}
			c.mu.Lock()
			if _, dup := c.seen[id]; !dup {
				c.seen[id] = at
			}
			c.mu.Unlock()
			select {
			case c.changed <- struct{}{}:
			default:
			}
		}
		c.exit <- cmd.Wait()
	}()
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case <-c.ready:
		return c, nil
	case err := <-c.exit:
		c.stopped, c.exitErr = true, err
		return nil, fmt.Errorf("child exited before it was ready: %w", err)
	case <-t.C:
	case <-ctx.Done():
	}
	return nil, errors.Join(errors.New("child projector not ready in time"), c.stop())
}

// waitFor waits until the child has reported every id, and returns the
// report times.
func (c *child) waitFor(ctx context.Context, ids []uuid.UUID, timeout time.Duration) (map[uuid.UUID]int64, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		c.mu.Lock()
		missing := 0
		for _, id := range ids {
			if _, ok := c.seen[id]; !ok {
				missing++
			}
		}
		seen := c.seen
		c.mu.Unlock()
		if missing == 0 {
			return seen, nil
		}
		select {
		case <-c.changed:
		case <-t.C:
			return nil, fmt.Errorf("child projector: %d of %d events not applied after %s", missing, len(ids), timeout)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// stop closes the child's stdin (it then stops its projector, releasing the
// lease, and exits) and waits for it; it kills a child that does not exit.
func (c *child) stop() error {
	if c.stopped {
		return c.exitErr
	}
	c.stopped = true
	c.stdin.Close()
	t := time.NewTimer(15 * time.Second)
	defer t.Stop()
	select {
	case c.exitErr = <-c.exit:
	case <-t.C:
		_ = c.cmd.Process.Kill()
		c.exitErr = errors.New("child projector did not stop: killed")
		if err := <-c.exit; err != nil {
			c.exitErr = fmt.Errorf("child projector did not stop: killed (%w)", err)
		}
	}
	return c.exitErr
}

// runChild is the child process: a projector inserting one row per event of
// one type, reporting on stdout when each event's batch has committed, until
// stdin closes.
func runChild(args []string) error {
	fs := flag.NewFlagSet(childCommand, flag.ContinueOnError)
	dbURL := fs.String("db", "", "database URL")
	name := fs.String("name", "", "projection name")
	typ := fs.String("type", "", "event type handled")
	table := fs.String("table", "", "read table")
	pollOnly := fs.Bool("poll-only", false, "projector PollOnly")
	pollEvery := fs.Duration("poll-interval", 0, "projector PollInterval (0: default)")
	batch := fs.Bool("batch", false, "a BatchProjection: one INSERT per batch")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	pool, err := pgxpool.New(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := conduit.NewStore(pool, &conduit.Config{DisableNotify: true,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	p := &e2eProjection{name: *name, typ: *typ,
		sql:    `INSERT INTO ` + *table + ` (event_id, applied_at) VALUES ($1, clock_timestamp())`,
		signal: make(chan struct{}, 1)}
	var proj conduit.Projection = p
	if *batch {
		p.sql = `INSERT INTO ` + *table + ` (event_id, applied_at) SELECT id, clock_timestamp() FROM unnest($1::uuid[]) AS id`
		proj = e2eBatchProjection{p}
	}
	pr, err := conduit.NewProjector(store, proj, &conduit.ProjectorConfig{PollOnly: *pollOnly, PollInterval: *pollEvery})
	if err != nil {
		return err
	}
	runDone := make(chan error, 1)
	go func() { runDone <- pr.Run(ctx) }()

	// Ready: caught up with the log as it is, and (unless polling only)
	// listening.
	var head conduit.Position
	err = pool.QueryRow(ctx, `SELECT transaction_id::text::bigint, global_position FROM conduit.events
		ORDER BY transaction_id DESC, global_position DESC LIMIT 1`).Scan(&head.TransactionID, &head.GlobalPosition)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if err := store.WaitFor(ctx, *name, head); err != nil {
		return err
	}
	if !*pollOnly {
		if err := waitListening(ctx, pool); err != nil {
			return err
		}
	}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "ready")
	if err := out.Flush(); err != nil {
		return err
	}

	// Report each applied event once its batch has committed.
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-p.signal:
		}
		pending := p.take()
		if len(pending) == 0 {
			continue
		}
		last := pending[0].Position
		for _, e := range pending {
			if last.Before(e.Position) {
				last = e.Position
			}
		}
		if err := store.WaitFor(ctx, *name, last); err != nil {
			break // ctx ended
		}
		at := time.Now().UnixNano()
		for _, e := range pending {
			fmt.Fprintf(out, "%s %d\n", e.ID, at)
		}
		if err := out.Flush(); err != nil {
			return err
		}
	}
	return <-runDone
}

// waitListening waits until the store's listener connection has run LISTEN
// (it shows in pg_stat_activity). No signal says so from outside the
// library; this runs before timing starts.
func waitListening(ctx context.Context, pool *pgxpool.Pool) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()
			  AND query LIKE '%LISTEN `+conduit.EventsChannel+`%'`).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// e2eProjection inserts a row per event of its type and queues the event
// for the commit watcher.
type e2eProjection struct {
	name, typ, sql string
	mu             sync.Mutex
	pending        []conduit.Event
	signal         chan struct{}
}

func (p *e2eProjection) Name() string         { return p.name }
func (p *e2eProjection) EventTypes() []string { return []string{p.typ} }

func (p *e2eProjection) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	if e.Type != p.typ {
		return nil
	}
	if _, err := tx.Exec(ctx, p.sql, e.ID); err != nil {
		return err
	}
	p.mu.Lock()
	p.pending = append(p.pending, e)
	p.mu.Unlock()
	select {
	case p.signal <- struct{}{}:
	default:
	}
	return nil
}

// e2eBatchProjection is e2eProjection as a BatchProjection: one INSERT
// per batch.
type e2eBatchProjection struct{ *e2eProjection }

func (p e2eBatchProjection) ApplyBatch(ctx context.Context, tx pgx.Tx, events []conduit.Event) error {
	ids := make([]uuid.UUID, len(events))
	for i, e := range events {
		ids[i] = e.ID
	}
	if _, err := tx.Exec(ctx, p.sql, ids); err != nil {
		return err
	}
	p.mu.Lock()
	p.pending = append(p.pending, events...)
	p.mu.Unlock()
	select {
	case p.signal <- struct{}{}:
	default:
	}
	return nil
}

func (p *e2eProjection) take() []conduit.Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.pending
	p.pending = nil
	return out
}
