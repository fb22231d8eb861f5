package conduit_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The batch functions (conduit.append_batch_one, append_batch_one_outbox,
// append_batch) run their statement from PL/pgSQL, whose plans the server
// caches per session, choosing for each call between a custom plan (made
// for the call's arrays: planned again every time) and the generic plan
// (made once). For batches of a few appends the planner's estimate made
// custom plans look cheaper, so a connection whose first batches were small
// planned the whole statement again on every batch: two to three times the
// server's CPU per batch of 2 to 6 appends (about 600 µs against 240–300
// µs here), on the path of every concurrent append. The functions must
// keep one plan: after the first calls, a batch plans nothing.
func TestAppendBatchFunctionsPlanOnce(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, pool := newStore(t, nil)
	var planned atomic.Int64
	// Each planning the server does is reported to this session (a
	// superuser's setting: the tests' role is one).
	conn := noticeConn(t, ctx, pool, "SET log_planner_stats = on; SET client_min_messages = log",
		func(n *pgconn.Notice) {
			if strings.Contains(n.Message, "PLANNER STATISTICS") {
				planned.Add(1)
			}
		})
	for name, call := range batchFunctionCalls(t) {
		planned.Store(0)
		const warmUp, measured = 8, 5
		for i := range warmUp + measured {
			if i == warmUp {
				if planned.Load() == 0 {
					t.Fatalf("%s: no planning reported while warming up: the check below could not fail", name)
				}
				planned.Store(0)
			}
			callBatchFunction(t, ctx, conn, name, call, i)
		}
		if got := planned.Load(); got != 0 {
			t.Errorf("%s: %d plannings in %d calls after the first %d: a batch of two appends is planned again at every call",
				name, got, measured, warmUp)
		}
	}
}

// The plan the batch functions keep (the generic one) must find a
// stream's head and an event id by index on a large log, never by a scan of
// conduit.events.
func TestAppendBatchFunctionsGenericPlanUsesIndexes(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, pool := newStore(t, nil)
	for _, sql := range []string{
		largeLog, `ANALYZE conduit.events`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	var mu sync.Mutex
	var plans []string
	// auto_explain sends the plan of every statement, the functions'
	// included, to this session.
	conn := noticeConn(t, ctx, pool, `LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;
		SET auto_explain.log_nested_statements = on; SET client_min_messages = log`,
		func(n *pgconn.Notice) {
			mu.Lock()
			defer mu.Unlock()
			plans = append(plans, n.Message+"\n"+n.Detail)
		})
	for name, call := range batchFunctionCalls(t) {
		mu.Lock()
		plans = nil
		mu.Unlock()
		// Expected version -1 (any): the plan probes the event id too.
		for i := range 8 {
			callBatchFunction(t, ctx, conn, name, func(i int) (string, []any) {
				q, args := call(i)
				args[1] = []int64{-1, -1}
				return q, args
			}, i)
		}
		mu.Lock()
		all := strings.Join(plans, "\n")
		mu.Unlock()
		switch {
		case !strings.Contains(all, "events_stream_version_key"):
			t.Errorf("%s: no plan reads a stream's head by index:\n%s", name, all)
		case !strings.Contains(all, "events_event_id_key"):
			t.Errorf("%s: no plan probes event ids by index:\n%s", name, all)
		case strings.Contains(all, "Seq Scan on events"):
			t.Errorf("%s: a plan scans conduit.events:\n%s", name, all)
		}
	}
}

// noticeConn is a connection of pool's database, set up by setup, whose
// notices (LOG messages too, with client_min_messages = log) go to notice.
func noticeConn(t *testing.T, ctx context.Context, pool *pgxpool.Pool, setup string, notice func(*pgconn.Notice)) *pgx.Conn {
	t.Helper()
	cfg := pool.Config().ConnConfig.Copy()
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notice(n) }
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, setup); err != nil {
		t.Fatal(err)
	}
	return conn
}

// callBatchFunction runs call(i) on conn and checks both appends went in.
func callBatchFunction(t *testing.T, ctx context.Context, conn *pgx.Conn, name string, call func(i int) (string, []any), i int) {
	t.Helper()
	q, args := call(i)
	var n int
	if err := conn.QueryRow(ctx, q, args...).Scan(&n); err != nil {
		t.Fatalf("%s, call %d: %v", name, i, err)
	}
	if n != 2 {
		t.Fatalf("%s, call %d: %d rows, want 2", name, i, n)
	}
}

// batchFunctionCalls are calls of the three batch functions, each with a
// batch of two single-event appends to new streams (expected version 0).
func batchFunctionCalls(t *testing.T) map[string]func(i int) (string, []any) {
	return map[string]func(i int) (string, []any){
		"append_batch_one": func(i int) (string, []any) {
			s, ids := batchArgs(t.Name(), "one", i)
			return `SELECT count(*) FROM conduit.append_batch_one($1::text[], $2::bigint[], $3::text[]::uuid[], $4::text[], $5::text[], $6::text[])`,
				[]any{s, []int64{0, 0}, ids, []string{"deposit_made", "deposit_made"}, []string{`{"n":1}`, `{"n":2}`}, []string{"", ""}}
		},
		"append_batch_one_outbox": func(i int) (string, []any) {
			s, ids := batchArgs(t.Name(), "outbox", i)
			return `SELECT count(*) FROM conduit.append_batch_one_outbox($1::text[], $2::bigint[], $3::text[]::uuid[], $4::text[], $5::text[], $6::text[],
			                                                         $7::integer[], $8::text[]::uuid[], $9::text[], $10::text[], $11::bytea[], $12::text[])`,
				[]any{s, []int64{0, 0}, ids, []string{"deposit_made", "deposit_made"}, []string{`{"n":1}`, `{"n":2}`}, []string{"", ""},
					[]int32{1, 2}, []string{uuid.NewString(), uuid.NewString()}, []string{"deposits", "deposits"}, s,
					[][]byte{[]byte(`{"n":1}`), []byte(`{"n":2}`)}, []string{"", ""}}
		},
		"append_batch": func(i int) (string, []any) {
			s, ids := batchArgs(t.Name(), "many", i)
			return `SELECT count(*) FROM conduit.append_batch($1::text[], $2::bigint[], $3::integer[], $4::text[]::uuid[], $5::text[], $6::text[], $7::text[],
			                                              $8::integer[], $9::text[]::uuid[], $10::text[], $11::text[], $12::bytea[], $13::text[])`,
				[]any{s, []int64{0, 0}, []int32{1, 2}, ids, []string{"deposit_made", "deposit_made"}, []string{`{"n":1}`, `{"n":2}`}, []string{"", ""},
					[]int32{}, []string{}, []string{}, []string{}, [][]byte{}, []string{}}
		},
	}
}

// batchArgs is a batch of two new streams and two event ids.
func batchArgs(test, fn string, i int) (streams, ids []string) {
	for k := range 2 {
		streams = append(streams, fmt.Sprintf("%s-%s-%d-%d", test, fn, i, k))
		ids = append(ids, uuid.NewString())
	}
	return streams, ids
}
