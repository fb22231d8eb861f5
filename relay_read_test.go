package conduit

import (
	"context"
	"fmt"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit/internal/dbgen"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// The relay reads its batches with OutboxListForRelayLean, which decodes
// the wire format itself: it must return what the generated
// OutboxListForRelay returns, value for value, in every query mode (the
// text format behind PgBouncer takes the generated path), for edge values.
func TestOutboxListForRelayLeanMatchesGenerated(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url, pool, store := relayReadStore(t)

	big := []byte(strings.Repeat("payload ", 1<<17)) // 1 MiB
	msgs := []Message{
		NewMessage("orders", "order-1", []byte(`{"a":1}`)),
		NewMessage("orders", "", []byte{}),                          // no key, empty payload
		NewMessage("zürich.événements", "clé-ü-日本", []byte{0, 255}), // unicode, binary payload
		NewMessage("big", "k", big),
		{ID: uuid.New(), Topic: "headers", Key: "k", Payload: []byte("x"), Headers: map[string]string{"a": "1", "b": "ü"}},
	}
	for range 300 { // more than one growth of the page's buffers
		msgs = append(msgs, NewMessage("bulk", "key", []byte("0123456789")))
	}
	if err := store.Enqueue(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	// Timestamps the default never gives: before 2000 (negative on the
	// wire), with microseconds, and far ahead.
	if _, err := pool.Exec(ctx, `INSERT INTO conduit.outbox (message_id, topic, payload, created_at)
		VALUES (gen_random_uuid(), 'old', '\x00', '1970-01-01 00:00:00.000001+00'),
		       (gen_random_uuid(), 'older', '\x01', '1899-12-31 23:59:59.999999+00'),
		       (gen_random_uuid(), 'later', '\x02', '2999-06-30 12:34:56.789012+00')`); err != nil {
		t.Fatal(err)
	}

	params := dbgen.OutboxListForRelayParams{MaxCount: 10_000}
	// The read stops at the safe horizon, which transactions of other tests
	// on the server may hold back for a while.
	waitReadable(t, ctx, pool, len(msgs)+3)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			q := dbgen.New(poolWithMode(t, url, mode))
			want, err := q.OutboxListForRelay(ctx, params)
			if err != nil {
				t.Fatal(err)
			}
			got, err := q.OutboxListForRelayLean(ctx, params)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(msgs)+3 || len(want) != len(got) {
				t.Fatalf("read %d rows (generated: %d), want %d", len(got), len(want), len(msgs)+3)
			}
			for i := range want {
				w, g := want[i], got[i]
				if !g.CreatedAt.Equal(w.CreatedAt) || g.CreatedAt.Location() != w.CreatedAt.Location() {
					t.Errorf("row %d: created_at %v, generated %v", i, g.CreatedAt, w.CreatedAt)
				}
				w.CreatedAt, g.CreatedAt = time.Time{}, time.Time{}
				if !reflect.DeepEqual(g, w) {
					t.Errorf("row %d:\n got %+v\nwant %+v", i, truncated(g), truncated(w))
				}
				if cap(g.Payload) != len(g.Payload) {
					t.Errorf("row %d: payload capacity %d beyond its length %d: an append would write into the next row's", i, cap(g.Payload), len(g.Payload))
				}
			}
		})
	}

	// A value the decoder does not take (an infinite timestamp) is scanned
	// as the generated method scans it: the same error.
	if _, err := pool.Exec(ctx, `INSERT INTO conduit.outbox (message_id, topic, payload, created_at)
		VALUES (gen_random_uuid(), 'infinite', '\x00', 'infinity')`); err != nil {
		t.Fatal(err)
	}
	q := dbgen.New(pool)
	waitReadable(t, ctx, pool, len(msgs)+4)
	_, wantErr := q.OutboxListForRelay(ctx, params)
	_, gotErr := q.OutboxListForRelayLean(ctx, params)
	if wantErr == nil || gotErr == nil || gotErr.Error() != wantErr.Error() {
		t.Errorf("infinite created_at: error %v, generated %v; want the same error", gotErr, wantErr)
	}
}

// The lean read allocates per page, not per row. (Not parallel:
// AllocsPerRun counts the whole process's allocations.)
func TestOutboxListForRelayLeanAllocations(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewPool(t, Migrations(), Migrate)
	store, err := NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	const rows = 1000
	msgs := make([]Message, rows)
	for i := range msgs {
		msgs[i] = NewMessage("topic", "key", []byte("payload"))
	}
	if err := store.Enqueue(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	waitReadable(t, ctx, pool, rows)
	q := dbgen.New(pool)
	params := dbgen.OutboxListForRelayParams{MaxCount: rows}
	read := func(list func(context.Context, dbgen.OutboxListForRelayParams) ([]dbgen.OutboxListForRelayRow, error)) func() {
		return func() {
			got, err := list(ctx, params)
			if err != nil || len(got) != rows {
				t.Fatalf("read %d rows (%v), want %d", len(got), err, rows)
			}
		}
	}
	generated := testing.AllocsPerRun(5, read(q.OutboxListForRelay))
	lean := testing.AllocsPerRun(5, read(q.OutboxListForRelayLean))
	t.Logf("allocations per read of %d rows: generated %.0f, lean %.0f", rows, generated, lean)
	if generated < 3*rows || lean > rows/10 {
		t.Errorf("allocations per read of %d rows: lean %.0f (want at most %d), generated %.0f (want at least %d)",
			rows, lean, rows/10, generated, 3*rows)
	}

	// Read into a page again and again (the relay's way), a read allocates
	// what it hands on (its texts and payloads), not its rows' slice again:
	// a fraction of the bytes of a read of its own.
	page := &dbgen.OutboxPage{}
	into := func(ctx context.Context, arg dbgen.OutboxListForRelayParams) ([]dbgen.OutboxListForRelayRow, error) {
		return q.OutboxListForRelayInto(ctx, arg, page)
	}
	read(into)() // the page's buffers are made
	fresh, reused := allocatedBytes(5, read(q.OutboxListForRelayLean)), allocatedBytes(5, read(into))
	t.Logf("bytes allocated per read of %d rows: %d of its own, %d into a page read into before", rows, fresh, reused)
	if reused*3 > fresh {
		t.Errorf("a read into a reused page allocates %d bytes, want at most a third of a read of its own (%d)", reused, fresh)
	}
}

// allocatedBytes returns the bytes the process allocates per call of f, on
// average over runs calls (f must not run goroutines of its own).
func allocatedBytes(runs int, f func()) uint64 {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / uint64(runs)
}

// The relay reads each batch into one of two pages it reuses. The rows a
// read hands on stay as they were read when the page is read into again
// (their texts and payloads are never reused); every page reads what the
// generated query reads, in every query mode; a shorter page leaves no
// row of a longer one behind in the page's slice.
func TestOutboxListForRelayIntoReusesPage(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url, pool, store := relayReadStore(t)
	var msgs []Message
	for i := range 600 {
		m := NewMessage(fmt.Sprintf("topic-%d", i%7), fmt.Sprintf("key-%d", i%13), []byte(strings.Repeat(strconv.Itoa(i), 1+i%50)))
		if i%5 == 0 {
			m.Headers = map[string]string{"n": strconv.Itoa(i)}
		}
		msgs = append(msgs, m)
	}
	if err := store.Enqueue(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	waitReadable(t, ctx, pool, len(msgs))
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			q := dbgen.New(poolWithMode(t, url, mode))
			page := &dbgen.OutboxPage{}
			var kept, want []dbgen.OutboxListForRelayRow // rows handed on, and what was read
			var after Position
			for _, size := range []int32{250, 250, 100} {
				params := dbgen.OutboxListForRelayParams{AfterTx: after.TransactionID, AfterPosition: after.GlobalPosition, MaxCount: size}
				w, err := q.OutboxListForRelay(ctx, params)
				if err != nil {
					t.Fatal(err)
				}
				got, err := q.OutboxListForRelayInto(ctx, params, page)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != int(size) || len(w) != len(got) {
					t.Fatalf("read %d rows (generated: %d), want %d", len(got), len(w), size)
				}
				for i := range got[:cap(got)][len(got):] {
					if !reflect.DeepEqual(got[:cap(got)][len(got)+i], dbgen.OutboxListForRelayRow{}) {
						t.Fatalf("page of %d rows: row %d of an earlier page left in its slice", len(got), len(got)+i)
					}
				}
				kept, want = append(kept, got...), append(want, w...)
				last := got[len(got)-1]
				after = Position{TransactionID: last.TransactionID, GlobalPosition: last.Position}
			}
			for i := range want {
				w, g := want[i], kept[i]
				if !g.CreatedAt.Equal(w.CreatedAt) {
					t.Errorf("row %d: created_at %v, generated %v", i, g.CreatedAt, w.CreatedAt)
				}
				w.CreatedAt, g.CreatedAt = time.Time{}, time.Time{}
				if !reflect.DeepEqual(g, w) {
					t.Fatalf("row %d after later reads into its page:\n got %+v\nwant %+v", i, truncated(g), truncated(w))
				}
			}
		})
	}
}

// relayReadStore returns the URL of a new migrated database, a pool on it
// and a Store over the pool.
func relayReadStore(t *testing.T) (string, *pgxpool.Pool, *Store) {
	t.Helper()
	url := pgtest.URLFor(t, pgtest.NewDB(t, Migrations(), Migrate))
	pool := pgtest.Connect(t, url)
	store, err := NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	return url, pool, store
}

// waitReadable waits until n messages of the outbox are below the safe
// horizon, where the relay's read sees them.
func waitReadable(t *testing.T, ctx context.Context, pool *pgxpool.Pool, n int) {
	t.Helper()
	for {
		var below int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM conduit.outbox
			WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())`).Scan(&below); err != nil {
			t.Fatal(err)
		}
		if below == n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d messages below the safe horizon, want %d: %v", below, n, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func poolWithMode(t *testing.T, url string, mode pgx.QueryExecMode) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.DefaultQueryExecMode = mode
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// truncated shortens a row's payload for an error message.
func truncated(r dbgen.OutboxListForRelayRow) dbgen.OutboxListForRelayRow {
	if len(r.Payload) > 32 {
		r.Payload = r.Payload[:32]
	}
	return r
}
