package conduit_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// totals keeps, per stream, the count and the sum of the events' values and
// a hash chain of the versions in the order applied (so order matters).
type totals struct{ name string }

type amount struct {
	V int `json:"v"`
}

func (totals) ReadTables() []string { return []string{"public.totals"} }

func (tt totals) Name() string { return tt.name }

func (totals) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	var a amount
	if err := json.Unmarshal(e.Data, &a); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+conduit.Table(ctx, "public.totals")+` AS t (stream_id, n, sum, chain) VALUES ($1, 1, $2, $3)
		ON CONFLICT (stream_id) DO UPDATE SET n = t.n + 1, sum = t.sum + $2,
		chain = md5(t.chain || $3)`, e.StreamID, a.V, fmt.Sprint(e.StreamVersion))
	return err
}

func readTotals(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var s string
	err := pool.QueryRow(context.Background(),
		`SELECT COALESCE(string_agg(format('%s:%s:%s:%s', stream_id, n, sum, chain), ' ' ORDER BY stream_id), '') FROM public.totals`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// foldTotals computes the same table from the log in Go.
func foldTotals(t *testing.T, store *conduit.Store, pool *pgxpool.Pool) string {
	t.Helper()
	type acc struct {
		n, sum int
		chain  string
	}
	m := map[string]*acc{}
	var order []string
	for e, err := range store.ReadAll(context.Background(), conduit.Position{}) {
		if err != nil {
			t.Fatal(err)
		}
		var a amount
		_ = json.Unmarshal(e.Data, &a)
		x, ok := m[e.StreamID]
		if !ok {
			x = &acc{chain: fmt.Sprint(e.StreamVersion)}
			m[e.StreamID] = x
			order = append(order, e.StreamID)
			x.n, x.sum = 1, a.V
			continue
		}
		x.n++
		x.sum += a.V
		var h string
		if err := pool.QueryRow(context.Background(), `SELECT md5($1 || $2)`, x.chain, fmt.Sprint(e.StreamVersion)).Scan(&h); err != nil {
			t.Fatal(err)
		}
		x.chain = h
	}
	slices.Sort(order)
	var parts []string
	for _, s := range order {
		parts = append(parts, fmt.Sprintf("%s:%d:%d:%s", s, m[s].n, m[s].sum, m[s].chain))
	}
	return strings.Join(parts, " ")
}

// Over random histories (appends of random sizes to random streams, some
// rolled back, some committed late, rebuilds and online rebuilds in
// between), the incrementally maintained read table equals a full rebuild,
// an online rebuild (shadow table swapped in) and a fold of the log.
func TestProjectionIncrementalEqualsRebuild(t *testing.T) {
	t.Parallel()
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			store, pool := newStore(t, nil)
			if _, err := pool.Exec(ctx, `CREATE TABLE public.totals (stream_id text PRIMARY KEY, n int NOT NULL, sum int NOT NULL, chain text NOT NULL)`); err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(seed, 42))
			run := runProjector(t, newProjector(t, store, totals{name: "totals"},
				&conduit.ProjectorConfig{BatchSize: 1 + rng.IntN(20), PollInterval: 10 * time.Millisecond}))
			var last conduit.Position
			var held pgx.Tx
			defer func() {
				// A failed step must not leave its transaction open: the pool
				// would wait for it at cleanup, and its transaction id would
				// hold the safe horizon of every test on the server.
				if held != nil {
					_ = held.Rollback(context.Background())
				}
			}()
			for step := range 60 {
				stream := fmt.Sprintf("s%d", rng.IntN(6))
				n := 1 + rng.IntN(5)
				events := make([]conduit.EventData, n)
				for i := range events {
					events[i] = mustEvent(t, "amount", amount{V: rng.IntN(100)})
				}
				switch op := rng.IntN(10); {
				case op == 0: // rolled back
					tx, err := pool.Begin(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := store.AppendTx(ctx, tx, stream, conduit.Any, events...); err != nil {
						t.Fatal(err)
					}
					if err := tx.Rollback(ctx); err != nil {
						t.Fatal(err)
					}
				case op == 1 && held == nil: // held open, committed later
					tx, err := pool.Begin(ctx)
					if err != nil {
						t.Fatal(err)
					}
					res, err := store.AppendTx(ctx, tx, "held-"+fmt.Sprint(step), conduit.NoStream, events...)
					if err != nil {
						t.Fatal(err)
					}
					held = tx
					if last.Before(res.Position) {
						last = res.Position
					}
				case op == 2 && held != nil:
					if err := held.Commit(ctx); err != nil {
						t.Fatal(err)
					}
					held = nil
					store.Notify()
				case op == 3:
					if err := store.RebuildProjection(ctx, "totals"); err != nil && !errors.Is(err, conduit.ErrNotFound) {
						t.Fatal(err)
					}
				case op == 4:
					if err := store.RebuildProjectionOnline(ctx, "totals"); err != nil && !errors.Is(err, conduit.ErrNotFound) {
						t.Fatalf("step %d: online rebuild: %v", step, err)
					}
				default:
					res, err := store.Append(ctx, stream, conduit.Any, events...)
					if err != nil {
						t.Fatal(err)
					}
					if last.Before(res.Position) {
						last = res.Position
					}
				}
			}
			if held != nil {
				if err := held.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				store.Notify()
			}
			waitFor(t, store, "totals", last)
			incremental := readTotals(t, pool)
			if strings.Count(incremental, ":") < 8 {
				t.Fatalf("history too thin to test anything: %q", incremental)
			}
			want := foldTotals(t, store, pool)
			if incremental != want {
				t.Fatalf("incremental read table:\n%s\nfold of the log:\n%s", incremental, want)
			}
			if err := store.RebuildProjection(ctx, "totals"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, store, "totals", last)
			if rebuilt := readTotals(t, pool); rebuilt != incremental {
				t.Fatalf("after rebuild:\n%s\nincremental:\n%s", rebuilt, incremental)
			}
			var before uint32
			if err := pool.QueryRow(ctx, `SELECT 'public.totals'::regclass::oid`).Scan(&before); err != nil {
				t.Fatal(err)
			}
			if err := store.RebuildProjectionOnline(ctx, "totals"); err != nil {
				t.Fatal(err)
			}
			waitStatus(t, store, "totals", "online rebuild swapped in", func(st conduit.ProjectionStatus) bool {
				return st.OnlineRebuild == nil
			})
			var after uint32
			if err := pool.QueryRow(ctx, `SELECT 'public.totals'::regclass::oid`).Scan(&after); err != nil {
				t.Fatal(err)
			}
			if online := readTotals(t, pool); online != incremental || after == before {
				t.Fatalf("after an online rebuild (table oid %d → %d):\n%s\nincremental:\n%s", before, after, online, incremental)
			}
			run()
		})
	}
}

// A database whose stored transaction ids are above the server's (as after
// a logical restore into a new cluster): projectors refuse, naming the fix;
// the fix makes them run again with every stream in order.
func TestRestoredDatabaseDetectedAndRebased(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendN(t, store, "a", 3)
	appendN(t, store, "b", 2)
	// Simulate the restore: push the stored ids far above the server's.
	for _, sql := range []string{
		`ALTER TABLE conduit.events DISABLE TRIGGER events_immutable`,
		`UPDATE conduit.events SET transaction_id = (transaction_id::text::bigint + 1000000000)::text::xid8`,
		`ALTER TABLE conduit.events ENABLE TRIGGER events_immutable`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	p := newProjector(t, store, &ledger{name: "ledger"}, nil)
	runCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := p.Run(runCtx)
	var rde *conduit.RestoredDatabaseError
	if !errors.Is(err, conduit.ErrRestoredDatabase) || !errors.As(err, &rde) || !strings.Contains(err.Error(), "conduit.rebase_transaction_ids()") {
		t.Fatalf("Run = %v, want ErrRestoredDatabase naming the fix", err)
	}
	var msg string
	if err := pool.QueryRow(ctx, `SELECT conduit.rebase_transaction_ids()`).Scan(&msg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "rebased 5 events") {
		t.Fatalf("rebase said %q", msg)
	}
	res := appendN(t, store, "a", 2)
	runProjector(t, newProjector(t, store, &ledger{name: "ledger"}, nil))
	waitFor(t, store, "ledger", res.Position)
	checkLedgerMatchesLog(t, store, pool)
	checkStreamAppliedInOrder(t, pool, "a", 5)
}

// Status is readable from SQL with the same figures as from Go.
func TestProjectionStatusFromSQL(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	res := appendN(t, store, "a", 4)
	stop := runProjector(t, newProjector(t, store, &ledger{name: "ledger"}, &conduit.ProjectorConfig{InstanceID: "inst-1"}))
	waitFor(t, store, "ledger", res.Position)
	stop()
	appendN(t, store, "a", 2)
	var state, owner string
	var lag, applied int64
	err := pool.QueryRow(ctx, `SELECT state, COALESCE(owner, ''), lag_events, events_applied FROM conduit.projection_status() WHERE name = 'ledger'`).
		Scan(&state, &owner, &lag, &applied)
	if err != nil {
		t.Fatal(err)
	}
	if state != "stopped" || owner != "" || lag != 2 || applied != 4 {
		t.Fatalf("SQL status: state %s owner %q lag %d applied %d", state, owner, lag, applied)
	}
	st, err := store.ProjectionStatus(ctx, "ledger")
	if err != nil {
		t.Fatal(err)
	}
	if string(st.State) != state || st.LagEvents != lag || st.EventsApplied != applied || st.Lag <= 0 || st.LastProgress.IsZero() {
		t.Fatalf("Go status %+v disagrees with SQL", st)
	}
	if _, err := store.ProjectionStatus(ctx, "none"); !errors.Is(err, conduit.ErrNotFound) {
		t.Fatalf("unknown projection: %v", err)
	}
}
