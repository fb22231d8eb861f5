package cli

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

func TestProjectionsParkedRetrySkip(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	ctx := testContext(t)

	if list := decode[[]projectionJSON](t, mustRun(t, ExitOK, url, "", "projections", "list", "--json")); len(list) != 0 {
		t.Fatalf("list before any projector: %+v", list)
	}
	r := mustRun(t, ExitOK, url, "", "projections", "list")
	if !strings.Contains(r.stderr, "no projection has run") {
		t.Fatalf("list before any projector:\n%s", r)
	}

	appendEvents(t, store, "order-1", "placed", 2)
	bad := appendEvents(t, store, "order-2", "poison", 1)
	good := appendEvents(t, store, "order-3", "placed", 1)
	runProjector(t, store, "parking", &conduit.ProjectorConfig{Poison: conduit.PoisonPark, MaxAttempts: 1,
		RetryBackoff: time.Millisecond, PollInterval: 20 * time.Millisecond})
	if err := store.WaitFor(ctx, "parking", good.Position); err != nil {
		t.Fatal(err)
	}

	list := decode[[]projectionJSON](t, mustRun(t, ExitOK, url, "", "projections", "list", "--json"))
	if len(list) != 1 || list[0].Name != "parking" || list[0].Parked != 1 || list[0].Checkpoint != good.Position.String() {
		t.Fatalf("list: %+v", list)
	}
	r = mustRun(t, ExitOK, url, "", "projections", "list")
	if !regexp.MustCompile(`(?m)^parking\s+(caught_up|running)\s+` + regexp.QuoteMeta(good.Position.String())).MatchString(r.stdout) {
		t.Fatalf("list:\n%s", r)
	}
	st := decode[projectionJSON](t, mustRun(t, ExitOK, url, "", "projections", "status", "parking", "--json"))
	if st.Name != "parking" || st.Parked != 1 || st.Owner == "" || st.LeaseExpiresAt == nil || st.EventsApplied != 3 {
		t.Fatalf("status --json: %+v", st)
	}
	r = mustRun(t, ExitOK, url, "", "projections", "status", "parking")
	if !strings.Contains(r.stdout, "parked          1") || !strings.Contains(r.stdout, "checkpoint      "+good.Position.String()) {
		t.Fatalf("status:\n%s", r)
	}
	if all := decode[[]projectionJSON](t, mustRun(t, ExitOK, url, "", "projections", "status", "--json")); len(all) != 1 {
		t.Fatalf("status --json of all: %+v", all)
	}

	parked := decode[[]parkedJSON](t, mustRun(t, ExitOK, url, "", "projections", "parked", "parking", "--json"))
	if len(parked) != 1 || parked[0].StreamID != "order-2" || parked[0].Status != "parked" ||
		parked[0].Position != bad.Position.String() || !strings.Contains(parked[0].Error, "cannot digest order-2") {
		t.Fatalf("parked --json: %+v", parked)
	}
	id := parked[0].EventID.String()
	r = mustRun(t, ExitOK, url, "", "projections", "parked", "parking")
	if !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "cannot digest order-2") {
		t.Fatalf("parked:\n%s", r)
	}

	// Retry: the projector re-applies it, fails again and parks it again.
	if a := decode[parkedActionJSON](t, mustRun(t, ExitOK, url, "", "projections", "retry", "parking", id, "--json")); a.Status != "retry" {
		t.Fatalf("retry --json: %+v", a)
	}
	eventually(t, "the retried event parked again", func() bool {
		p, err := store.ParkedEvents(ctx, "parking")
		return err == nil && len(p) == 1 && p[0].Status == "parked" && p[0].Attempts > parked[0].Attempts
	})
	r = mustRun(t, ExitOK, url, "", "projections", "skip", "parking", id)
	if !strings.Contains(r.stdout, "skipped event "+id) {
		t.Fatalf("skip:\n%s", r)
	}
	if p, _ := store.ParkedEvents(ctx, "parking"); len(p) != 1 || p[0].Status != "skipped" {
		t.Fatalf("after skip: %+v", p)
	}
	// Not found, and bad input.
	r = mustRun(t, ExitNotFound, url, "", "projections", "skip", "parking", id) // skipped already
	if !strings.Contains(r.stderr, "hint: `conduit projections parked parking`") {
		t.Fatalf("skip of a skipped event:\n%s", r)
	}
	mustRun(t, ExitNotFound, url, "", "projections", "retry", "parking", "01a22daf-6a32-7d1b-8a9d-45318d26b44f")
	mustRun(t, ExitUsage, url, "", "projections", "retry", "parking", "not-an-id")
	for _, args := range [][]string{
		{"projections", "status", "nothing"},
		{"projections", "parked", "nothing"},
		{"projections", "rebuild", "nothing"},
	} {
		r := mustRun(t, ExitNotFound, url, "", args...)
		if !strings.Contains(r.stderr, "conduit projections list") {
			t.Errorf("%v: want a hint:\n%s", args, r)
		}
	}
}

// A rebuild over enough events reports its progress more than once, as
// plain lines without a terminal, and returns once the replay caught up.
func TestRebuildProgress(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	const events = 30_000
	for i := range events / 5000 {
		appendEvents(t, store, "stream-"+strconv.Itoa(i), "placed", 5000)
	}
	head, err := store.Head(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	runProjector(t, store, "replayed", &conduit.ProjectorConfig{BatchSize: 100, PollInterval: 20 * time.Millisecond})
	if err := store.WaitFor(testContext(t), "replayed", head); err != nil {
		t.Fatal(err)
	}

	r := mustRun(t, ExitOK, url, "", "projections", "rebuild", "replayed", "--wait", "--interval", "10ms")
	progress := regexp.MustCompile(`(?m)^rebuild replayed: (\d+)/(\d+) events \(\d+%\), \d+ events/s, \S+ left$`).
		FindAllStringSubmatch(r.stderr, -1)
	if len(progress) < 2 {
		t.Fatalf("want more than one progress line:\n%s", r)
	}
	var partial bool
	for _, m := range progress {
		done, _ := strconv.Atoi(m[1])
		total, _ := strconv.Atoi(m[2])
		if total != events || done > total {
			t.Fatalf("progress line %q: want done <= total = %d", m[0], events)
		}
		partial = partial || (done > 0 && done < total)
	}
	if last := progress[len(progress)-1]; last[1] != last[2] {
		t.Fatalf("the last progress line is not complete: %q", last[0])
	}
	if !partial {
		t.Fatalf("no progress line between the start and the end:\n%s", r.stderr)
	}
	if !strings.Contains(r.stdout, "replayed rebuilt: 30000 events applied") {
		t.Fatalf("rebuild result:\n%s", r)
	}
	st, err := store.ProjectionStatus(testContext(t), "replayed")
	if err != nil || !st.RebuildStarted.IsZero() || st.EventsApplied != events {
		t.Fatalf("after the rebuild: %+v, %v", st, err)
	}

	// Without --wait and without a terminal it returns at once.
	j := decode[projectionJSON](t, mustRun(t, ExitOK, url, "", "projections", "rebuild", "replayed", "--json"))
	if j.Name != "replayed" || j.RebuildStartedAt == nil {
		t.Fatalf("rebuild --json: %+v", j)
	}
	if err := store.WaitFor(testContext(t), "replayed", head); err != nil {
		t.Fatal(err)
	}
}

// A replay that stalls on a poison event ends the wait with exit code 1.
func TestRebuildStalls(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	appendEvents(t, store, "a", "placed", 3)
	runProjector(t, store, "stalling", &conduit.ProjectorConfig{MaxAttempts: 1, RetryBackoff: time.Millisecond,
		PollInterval: 20 * time.Millisecond, StalledRetryInterval: 20 * time.Millisecond})
	waitState(t, store, "stalling", conduit.StateCaughtUp)
	appendEvents(t, store, "b", "poison", 1)
	waitState(t, store, "stalling", conduit.StateStalled)
	r := mustRun(t, ExitError, url, "", "projections", "rebuild", "stalling", "--wait", "--interval", "10ms")
	if !strings.Contains(r.stderr, "the replay of stalling stalled") || !strings.Contains(r.stderr, "cannot digest b") {
		t.Fatalf("rebuild of a poisoned projection:\n%s", r)
	}
}

func TestProjectionsPauseResume(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	ctx := testContext(t)
	first := appendEvents(t, store, "a", "placed", 2)
	runProjector(t, store, "pausable", &conduit.ProjectorConfig{PollInterval: 20 * time.Millisecond})
	if err := store.WaitFor(ctx, "pausable", first.Position); err != nil {
		t.Fatal(err)
	}

	p := decode[projectionJSON](t, mustRun(t, ExitOK, url, "", "projections", "pause", "pausable", "--json"))
	if p.State != "paused" || p.PausedAt == nil || p.Checkpoint != first.Position.String() {
		t.Fatalf("pause --json: %+v", p)
	}
	later := appendEvents(t, store, "a", "placed", 3)
	r := mustRun(t, ExitOK, url, "", "projections", "list")
	if !regexp.MustCompile(`(?m)^pausable\s+paused\s+` + regexp.QuoteMeta(first.Position.String()) + `\s+3\s`).MatchString(r.stdout) {
		t.Fatalf("list of a paused projection:\n%s", r)
	}
	rep := decode[doctorJSON](t, mustRun(t, ExitOK, url, "", "doctor", "--json", "--max-lag", "0s"))
	if c := check(t, rep, "projections"); c.Status != checkWarn || len(c.Details) != 1 ||
		!strings.Contains(c.Details[0], "pausable: paused") {
		t.Fatalf("doctor on a paused projection: %+v", c)
	}
	r = mustRun(t, ExitOK, url, "", "projections", "resume", "pausable")
	if !strings.Contains(r.stdout, "pausable resumed") {
		t.Fatalf("resume:\n%s", r)
	}
	if err := store.WaitFor(ctx, "pausable", later.Position); err != nil {
		t.Fatal(err)
	}
	for _, action := range []string{"pause", "resume"} {
		r := mustRun(t, ExitNotFound, url, "", "projections", action, "nothing")
		if !strings.Contains(r.stderr, "conduit projections list") {
			t.Errorf("%s of an unknown projection:\n%s", action, r)
		}
	}
}

// In a terminal the rebuild shows a progress bar (here written to a
// buffer in its place), with the count, events/s and the time left.
func TestRebuildProgressBar(t *testing.T) {
	t.Parallel()
	_, store := migratedDatabase(t)
	ctx := testContext(t)
	for i := range 4 {
		appendEvents(t, store, "s-"+strconv.Itoa(i), "placed", 5000)
	}
	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	runProjector(t, store, "barred", &conduit.ProjectorConfig{BatchSize: 100, PollInterval: 20 * time.Millisecond})
	if err := store.WaitFor(ctx, "barred", head); err != nil {
		t.Fatal(err)
	}
	if err := store.RebuildProjection(ctx, "barred"); err != nil {
		t.Fatal(err)
	}
	var errOut syncBuffer
	a := &app{out: &syncBuffer{}, errOut: &errOut}
	st, err := a.followRebuild(ctx, store, "barred", 10*time.Millisecond, true)
	if err != nil || !st.RebuildStarted.IsZero() || st.EventsApplied != 20_000 {
		t.Fatalf("followRebuild: %+v, %v", st, err)
	}
	out := errOut.String()
	if !strings.Contains(out, "rebuild barred") || !strings.Contains(out, "100%") ||
		!strings.Contains(out, "(20000/20000") || !strings.Contains(out, "events/s") {
		t.Fatalf("progress bar:\n%q", out)
	}
	if strings.Contains(out, "\nrebuild barred:") {
		t.Fatalf("plain progress lines in bar mode:\n%q", out)
	}
}

// The command's statements run under --statement-timeout: a rebuild that
// waits for a lock past it fails, with a hint.
func TestStatementTimeout(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	ctx := testContext(t)
	runProjector(t, store, "locked", &conduit.ProjectorConfig{PollInterval: 20 * time.Millisecond})
	waitState(t, store, "locked", conduit.StateCaughtUp)
	tx, err := store.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // only held
	if _, err := tx.Exec(ctx, `SELECT FROM conduit.projections WHERE name = 'locked' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := mustRun(t, ExitError, url, "", "--statement-timeout", "300ms", "projections", "rebuild", "locked")
	if !strings.Contains(r.stderr, "statement timeout") || !strings.Contains(r.stderr, "hint: the statement ran longer than --statement-timeout") {
		t.Fatalf("rebuild behind a lock with --statement-timeout 300ms:\n%s", r)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("the rebuild gave up after %s", took)
	}
}

// counted writes one row per event into its read table, through
// conduit.Table (so an online rebuild replays into the shadow copy).
type counted struct{}

func (counted) Name() string         { return "counted" }
func (counted) ReadTables() []string { return []string{"public.counted"} }
func (counted) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	_, err := tx.Exec(ctx, `INSERT INTO `+conduit.Table(ctx, "public.counted")+` (id) VALUES ($1)`, e.ID)
	return err
}

// rebuild --online: the progress of the replay into the shadow tables,
// the swap, the same rows; refused at once (exit code 1, a hint) when a
// read table cannot be swapped.
func TestRebuildOnline(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	ctx := testContext(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE public.counted (id uuid PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	const events = 3000
	for i := range events / 1000 {
		appendEvents(t, store, "s-"+strconv.Itoa(i), "placed", 1000)
	}
	head, err := store.Head(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := conduit.NewProjector(store, counted{}, &conduit.ProjectorConfig{BatchSize: 100, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Run(runCtx)
	}()
	defer func() { stop(); <-done }()
	if err := store.WaitFor(ctx, "counted", head); err != nil {
		t.Fatal(err)
	}
	var before uint32
	if err := pool.QueryRow(ctx, `SELECT 'public.counted'::regclass::oid`).Scan(&before); err != nil {
		t.Fatal(err)
	}

	r := mustRun(t, ExitOK, url, "", "projections", "rebuild", "counted", "--online", "--wait", "--interval", "10ms")
	if !regexp.MustCompile(`(?m)^online rebuild counted: \d+ events replayed, \d+ events/s, \S+ left$`).MatchString(r.stderr) ||
		!strings.Contains(r.stdout, "counted rebuilt online: shadow tables swapped in") {
		t.Fatalf("rebuild --online --wait:\n%s", r)
	}
	var after uint32
	var rows int
	if err := pool.QueryRow(ctx, `SELECT 'public.counted'::regclass::oid, (SELECT count(*) FROM public.counted)`).Scan(&after, &rows); err != nil {
		t.Fatal(err)
	}
	if after == before || rows != events {
		t.Fatalf("after rebuild --online: oid %d → %d, %d rows; want a new table with %d", before, after, rows, events)
	}

	// Without --wait, --json shows the rebuild under way.
	j := decode[projectionJSON](t, mustRun(t, ExitOK, url, "", "projections", "rebuild", "counted", "--online", "--json"))
	if j.Name != "counted" || j.OnlineRebuild == nil {
		t.Fatalf("rebuild --online --json: %+v", j)
	}
	eventually(t, "the second online rebuild swapped in", func() bool {
		st, err := store.ProjectionStatus(ctx, "counted")
		return err == nil && st.OnlineRebuild == nil
	})

	if _, err := pool.Exec(ctx, `CREATE VIEW public.counted_total AS SELECT count(*) FROM public.counted`); err != nil {
		t.Fatal(err)
	}
	r = mustRun(t, ExitError, url, "", "projections", "rebuild", "counted", "--online")
	if !strings.Contains(r.stderr, "view counted_total") || !strings.Contains(r.stderr, "hint:") {
		t.Fatalf("rebuild --online with a view on the table:\n%s", r)
	}
}
