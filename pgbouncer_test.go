package conduit_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// These tests run through a real PgBouncer in transaction mode (PGBOUNCER_URL,
// started by .ci/pgbouncer with a pool of two server connections per
// database). Each test's database is made directly on the server and reached
// through PgBouncer by name.

// bouncerPool returns a pool on database name through PgBouncer, in query
// mode mode (0: pgx's default, QueryExecModeCacheStatement).
func bouncerPool(t testing.TB, name string, mode pgx.QueryExecMode) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.PgBouncerURL(t, name))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 8 // four times PgBouncer's pool: statements move between server connections
	if mode != 0 {
		cfg.ConnConfig.DefaultQueryExecMode = mode
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

const (
	bouncerWriters = 8
	bouncerAppends = 40 // per writer
)

// appendConcurrently has bouncerWriters goroutines append bouncerAppends
// events each, one at a time, to stream "w<i>", each append followed by a
// read of the event it appended, and returns the errors.
func appendConcurrently(t testing.TB, ctx context.Context, store *conduit.Store) []error {
	t.Helper()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	start := time.Now()
	for w := range bouncerWriters {
		wg.Go(func() {
			stream := fmt.Sprint("w", w)
			for i := range bouncerAppends {
				res, err := store.Append(ctx, stream, conduit.Any, mustEvent(t, "tick", i))
				if err != nil {
					fail(err)
					continue
				}
				for _, err := range store.ReadStream(ctx, stream, res.Version) {
					if err != nil {
						fail(err)
					}
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d writers x %d appends, each read back: %v", bouncerWriters, bouncerAppends, time.Since(start).Round(time.Millisecond))
	return errs
}

// With pgx's default query mode, statements prepared by name on one server
// connection are missing on the next (26000), or already there (42P05):
// appends fail now and then, each with ErrPoolerMisconfigured naming the
// fix, never with a bare driver error, and a failed append writes nothing.
func TestPgBouncerDefaultExecModeRefused(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	name := pgtest.NewDB(t, conduit.Migrations(), conduit.Migrate)
	pool := bouncerPool(t, name, 0)
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	errs := appendConcurrently(t, ctx, store)
	total := bouncerWriters * bouncerAppends
	failedAppends := 0
	for _, err := range errs {
		if strings.HasPrefix(err.Error(), "conduit: append") {
			failedAppends++
		}
	}
	t.Logf("pgx defaults through PgBouncer: %d of %d appends failed, %d reads", failedAppends, total, len(errs)-failedAppends)
	if failedAppends == 0 {
		t.Fatal("no append failed: statements did not move between server connections")
	}
	for _, err := range errs {
		if !errors.Is(err, conduit.ErrPoolerMisconfigured) || !strings.Contains(err.Error(), "default_query_exec_mode=exec") {
			t.Fatalf("error %q is not ErrPoolerMisconfigured naming the fix", err)
		}
		if conduit.IsOutcomeUnknown(err) || conduit.IsRefused(err) {
			t.Fatalf("error %q: IsOutcomeUnknown %v, IsRefused %v; want neither", err,
				conduit.IsOutcomeUnknown(err), conduit.IsRefused(err))
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			t.Fatalf("error %q does not wrap the server's error", err)
		}
	}
	direct := pgtest.Connect(t, pgtest.URLFor(t, name))
	if n := countEvents(t, ctx, direct, ""); n != total-failedAppends {
		t.Fatalf("%d events stored, want %d (the appends that succeeded)", n, total-failedAppends)
	}
}

// With default_query_exec_mode exec or cache_describe, everything but
// LISTEN works through PgBouncer in transaction mode: concurrent appends and
// reads, AppendTx in InTx, PollOnly projectors with WaitFor, and their lease
// (one instance applies, the other takes over when it stops).
func TestPgBouncerExecModes(t *testing.T) {
	t.Parallel()
	for _, m := range []struct {
		name string
		mode pgx.QueryExecMode
	}{{"exec", pgx.QueryExecModeExec}, {"cache_describe", pgx.QueryExecModeCacheDescribe}} {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			name := pgtest.NewDB(t, conduit.Migrations(), conduit.Migrate)
			direct := pgtest.Connect(t, pgtest.URLFor(t, name))
			createLedger(t, direct)
			store, err := conduit.NewStore(bouncerPool(t, name, m.mode), nil)
			if err != nil {
				t.Fatal(err)
			}

			// Two instances from the start: one holds the lease, one stands by.
			projectors := map[string]*conduit.Projector{}
			stops := map[string]func(){}
			for _, id := range []string{"first", "second"} {
				projectors[id] = newProjector(t, store, &ledger{name: "ledger", by: id}, &conduit.ProjectorConfig{
					PollOnly: true, PollInterval: 20 * time.Millisecond, LeaseDuration: 2 * time.Second,
					BatchSize: 50, InstanceID: id,
				})
				stops[id] = runProjector(t, projectors[id])
			}

			if errs := appendConcurrently(t, ctx, store); len(errs) > 0 {
				t.Fatalf("%d errors, the first: %v", len(errs), errs[0])
			}
			for w := range bouncerWriters {
				stream := fmt.Sprint("w", w)
				events := collect(t, store.ReadStream(ctx, stream, 1))
				if len(events) != bouncerAppends || events[len(events)-1].StreamVersion != bouncerAppends {
					t.Fatalf("stream %s: %d events", stream, len(events))
				}
				if v, err := store.StreamVersion(ctx, stream); err != nil || v != bouncerAppends {
					t.Fatalf("StreamVersion(%s) = %d, %v", stream, v, err)
				}
			}
			var res conduit.AppendResult
			err = store.InTx(ctx, func(tx pgx.Tx) error {
				res, err = store.AppendTx(ctx, tx, "in-tx", conduit.NoStream, mustEvent(t, "tick", 1), mustEvent(t, "tick", 2))
				return err
			})
			if err != nil || res.Version != 2 {
				t.Fatalf("AppendTx in InTx: %+v, %v", res, err)
			}
			waitFor(t, store, "ledger", res.Position)
			waitSettled(t, ctx, direct)
			if all := collect(t, store.ReadAll(ctx, conduit.Position{})); len(all) != bouncerWriters*bouncerAppends+2 {
				t.Fatalf("ReadAll: %d events", len(all))
			}

			// Stop whichever instance holds the lease: the other takes over.
			st, err := store.ProjectionStatus(ctx, "ledger")
			if err != nil || projectors[st.Owner] == nil {
				t.Fatalf("status %+v, %v: owner is neither instance", st, err)
			}
			owner, epoch := st.Owner, st.Epoch
			stops[owner]()
			res = appendN(t, store, "after-stop", 5)
			waitFor(t, store, "ledger", res.Position)
			st, err = store.ProjectionStatus(ctx, "ledger")
			if err != nil || st.Owner == owner || projectors[st.Owner] == nil || st.Epoch <= epoch {
				t.Fatalf("after %s stopped (epoch %d): status %+v, %v", owner, epoch, st, err)
			}
			checkLedgerMatchesLog(t, store, direct)
		})
	}
}

// A projection's statements meet the same failures with pgx's default query
// mode: they are the pool's fault, not the event's, so the projector retries
// them as database errors and never counts them against the event: nothing
// is parked, even with one attempt per event.
func TestPgBouncerDefaultExecModeNotPoison(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	name := pgtest.NewDB(t, conduit.Migrations(), conduit.Migrate)
	direct := pgtest.Connect(t, pgtest.URLFor(t, name))
	createLedger(t, direct)
	directStore, err := conduit.NewStore(direct, nil)
	if err != nil {
		t.Fatal(err)
	}
	bounced, err := conduit.NewStore(bouncerPool(t, name, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		runProjector(t, newProjector(t, bounced, &ledger{name: "ledger"}, &conduit.ProjectorConfig{
			PollOnly: true, PollInterval: 10 * time.Millisecond, RetryBackoff: time.Millisecond,
			BatchSize: 1, MaxAttempts: 1, Poison: conduit.PoisonPark, InstanceID: fmt.Sprint("p", i),
		}))
	}
	var res conduit.AppendResult
	for i := range 100 {
		if res, err = directStore.Append(ctx, fmt.Sprint("s", i%10), conduit.Any, mustEvent(t, "tick", i)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, directStore, "ledger", res.Position)
	parked, err := directStore.ParkedEvents(ctx, "ledger")
	if err != nil {
		t.Fatal(err)
	}
	if len(parked) > 0 {
		t.Fatalf("%d events parked, the first: %s", len(parked), parked[0].Error)
	}
	checkLedgerMatchesLog(t, directStore, direct)
}

// The same, without PgBouncer: a handler whose statement the server reports
// missing (a real 26000, from EXECUTE of a statement never prepared) on each
// event's first try. Under PoisonPark with one attempt, before the projector
// told these from the event's own failures, every event was parked.
func TestProjectorPreparedStatementMismatchNotPoison(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	var tried sync.Map
	l := &ledger{name: "ledger", fail: func(e conduit.Event) error {
		if _, again := tried.LoadOrStore(e.ID, true); !again {
			return errors.New("first try")
		}
		return nil
	}}
	p := newProjector(t, store, &mismatchOnce{l}, &conduit.ProjectorConfig{
		RetryBackoff: time.Millisecond, MaxAttempts: 1, Poison: conduit.PoisonPark,
	})
	runProjector(t, p)
	res := appendN(t, store, "s", 5)
	waitFor(t, store, "ledger", res.Position)
	parked, err := store.ParkedEvents(ctx, "ledger")
	if err != nil {
		t.Fatal(err)
	}
	if len(parked) > 0 {
		t.Fatalf("%d events parked, the first: %s", len(parked), parked[0].Error)
	}
	checkLedgerMatchesLog(t, store, pool)
}

// mismatchOnce is a ledger whose fail hook, when it fires, runs a statement
// the server reports missing instead (SQLSTATE 26000), as a pooler makes
// pgx's cached statements go missing.
type mismatchOnce struct{ *ledger }

func (m *mismatchOnce) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	if err := m.fail(e); err != nil {
		_, err := tx.Exec(ctx, "EXECUTE conduit_test_never_prepared")
		return err
	}
	return m.ledger.Apply(ctx, tx, e)
}

// migrationLocks counts the sessions holding Migrate's advisory lock on the
// database of pool.
func migrationLocks(t testing.TB, ctx context.Context, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND ((classid::bigint << 32) | objid::bigint) = $1`, conduit.MigrationLockID).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Migrate through PgBouncer in transaction mode refuses, three at once, on
// an empty database and on a migrated one, in either query mode, and leaves
// no advisory lock behind: a direct Migrate afterwards succeeds at once.
func TestPgBouncerMigrateRefused(t *testing.T) {
	t.Parallel()
	for _, m := range []struct {
		name string
		mode pgx.QueryExecMode
	}{{"default", 0}, {"exec", pgx.QueryExecModeExec}} {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			noop := func(context.Context, *pgxpool.Pool) error { return nil }
			name := pgtest.NewDB(t, fstest.MapFS{}, noop)
			direct := pgtest.Connect(t, pgtest.URLFor(t, name))

			migrateThrough := func(stage string) {
				t.Helper()
				const deploys = 3
				errs := make([]error, deploys)
				var wg sync.WaitGroup
				for i := range deploys {
					pool := bouncerPool(t, name, m.mode)
					wg.Go(func() { errs[i] = conduit.Migrate(ctx, pool) })
				}
				wg.Wait()
				t.Logf("%s: Migrate through PgBouncer: %v", stage, errs[0])
				for i, err := range errs {
					if !errors.Is(err, conduit.ErrNeedsDirectConnection) || !strings.Contains(err.Error(), "Migrate needs a direct connection") {
						t.Errorf("%s: deploy %d through PgBouncer: Migrate = %v, want ErrNeedsDirectConnection", stage, i, err)
					}
				}
				if n := migrationLocks(t, ctx, direct); n != 0 {
					t.Fatalf("%s: %d sessions hold Migrate's advisory lock after Migrate through PgBouncer", stage, n)
				}
			}

			migrateThrough("empty database")
			if exists(t, ctx, direct, "class", "conduit.events") {
				t.Error("Migrate through PgBouncer created conduit.events")
			}
			prompt, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			if err := conduit.Migrate(prompt, direct); err != nil {
				t.Fatalf("direct Migrate after Migrate through PgBouncer: %v", err)
			}
			migrateThrough("migrated database")
		})
	}
}
