package conduit

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/conduit-es/conduit/internal/dbgen"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// sqlRecorder is a dbgen.DBTX that records the statement it is given and
// runs nothing.
type sqlRecorder struct {
	sql  string
	args []any
}

func (r *sqlRecorder) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	r.sql, r.args = sql, args
	return pgconn.CommandTag{}, nil
}

func (r *sqlRecorder) Query(_ context.Context, sql string, args ...any) (pgx.Rows, error) {
	r.sql, r.args = sql, args
	return nil, pgx.ErrNoRows
}

func (r *sqlRecorder) QueryRow(_ context.Context, sql string, args ...any) pgx.Row {
	r.sql, r.args = sql, args
	return errRow{}
}

type errRow struct{}

func (errRow) Scan(...any) error { return pgx.ErrNoRows }

// The relay's statements that ask whether messages follow its checkpoint
// must stop at the first one, with the plan PostgreSQL caches for them
// (pgx prepares statements; after five runs PostgreSQL may switch to a
// generic plan): an EXISTS over the row comparison was planned as a bitmap
// scan of every index entry after the checkpoint, so each batch cost time
// in proportion to the backlog (a drain, to its square).
func TestRelayStatementsReadNoBacklog(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool := pgtest.NewPool(t, Migrations(), Migrate)
	store, err := NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	const backlog = 20_000
	for range backlog / 1000 {
		msgs := make([]Message, 1000)
		for i := range msgs {
			msgs[i] = NewMessage("t", "k"+strconv.Itoa(i%10), []byte("payload"))
		}
		if err := store.Enqueue(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
	}
	var first Position
	if err := pool.QueryRow(ctx, "SELECT transaction_id::text::bigint, position FROM conduit.outbox ORDER BY 1, 2 LIMIT 1").
		Scan(&first.TransactionID, &first.GlobalPosition); err != nil {
		t.Fatal(err)
	}
	// Statistics as autovacuum keeps them once the backlog is there.
	if _, err := pool.Exec(ctx, "ANALYZE conduit.outbox"); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "UPDATE conduit.outbox_relay SET owner = 'plan-test', epoch = 1"); err != nil {
		t.Fatal(err)
	}

	for name, call := range map[string]func(q *dbgen.Queries){
		"OutboxRelaySave": func(q *dbgen.Queries) {
			_, _ = q.OutboxRelaySave(ctx, dbgen.OutboxRelaySaveParams{
				CheckpointTx: first.TransactionID, CheckpointPosition: first.GlobalPosition, LeaseSeconds: 30,
				Owner: "plan-test", Epoch: 1, MoveTx: []string{}, MovePosition: []int64{},
			})
		},
		"OutboxAfter": func(q *dbgen.Queries) {
			_, _ = q.OutboxAfter(ctx, dbgen.OutboxAfterParams{AfterTx: first.TransactionID, AfterPosition: first.GlobalPosition})
		},
	} {
		rec := &sqlRecorder{}
		call(dbgen.New(rec))
		if most := mostRowsInGenericPlan(t, ctx, pool, rec.sql, rec.args); most > 1 {
			t.Errorf("%s: a node of its generic plan yields %d rows, want at most 1 (the backlog is %d)", name, most, backlog)
		}
	}
}

// mostRowsInGenericPlan runs sql, in a transaction rolled back, with its
// generic plan, and returns the most rows a node of the plan yielded.
func mostRowsInGenericPlan(t *testing.T, ctx context.Context, pool interface {
	Begin(context.Context) (pgx.Tx, error)
}, sql string, args []any) int64 {
	t.Helper()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SET LOCAL plan_cache_mode = force_generic_plan"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "PREPARE plan_probe AS "+sql); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = tx.Exec(ctx, "DEALLOCATE plan_probe") }()
	// EXECUTE takes no parameters: each argument becomes a literal of the
	// parameter's type, quoted by the server.
	var types []string
	if err := tx.QueryRow(ctx, "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'plan_probe'").Scan(&types); err != nil {
		t.Fatal(err)
	}
	literals := make([]string, len(args))
	for i, arg := range args {
		if err := tx.QueryRow(ctx, "SELECT quote_nullable($1::"+types[i]+")", arg).Scan(&literals[i]); err != nil {
			t.Fatalf("argument %d (%s): %v", i+1, types[i], err)
		}
		literals[i] += "::" + types[i]
	}
	var out string
	if err := tx.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE plan_probe("+strings.Join(literals, ", ")+")").Scan(&out); err != nil {
		t.Fatalf("explain: %v", err)
	}
	var plans []struct{ Plan planNode }
	if err := json.Unmarshal([]byte(out), &plans); err != nil || len(plans) != 1 {
		t.Fatalf("explain output %s: %v", out, err)
	}
	return plans[0].Plan.mostRows()
}

type planNode struct {
	Type  string     `json:"Node Type"`
	Rows  float64    `json:"Actual Rows"`
	Loops float64    `json:"Actual Loops"`
	Plans []planNode `json:"Plans"`
}

func (n planNode) mostRows() int64 {
	most := int64(n.Rows * max(n.Loops, 1))
	for _, c := range n.Plans {
		most = max(most, c.mostRows())
	}
	return most
}
