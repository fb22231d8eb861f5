package conduit_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// newPool returns a pool on a fresh, migrated database.
func newPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return pgtest.NewPool(t, conduit.Migrations(), conduit.Migrate)
}

// largeLog fills conduit.events with 200,000 events, 100 in each of 2,000
// streams, in one statement: a log large enough for the planner to prefer
// its indexes only if the query lets it (run ANALYZE after).
const largeLog = `INSERT INTO conduit.events (stream_id, stream_version, event_id, event_type, data)
	SELECT 's-' || (i / 100), i % 100 + 1, gen_random_uuid(), 't', '{}' FROM generate_series(0, 199999) AS i`

// newStore returns a store on a fresh, migrated database.
func newStore(t testing.TB, cfg *conduit.Config) (*conduit.Store, *pgxpool.Pool) {
	t.Helper()
	pool := newPool(t)
	store, err := conduit.NewStore(pool, cfg)
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	return store, pool
}

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mustEvent(t testing.TB, typ string, v any) conduit.EventData {
	t.Helper()
	e, err := conduit.NewEvent(typ, v)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// collect drains a sequence, failing the test on error.
func collect(t testing.TB, seq func(func(conduit.Event, error) bool)) []conduit.Event {
	t.Helper()
	var out []conduit.Event
	for e, err := range seq {
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		out = append(out, e)
	}
	return out
}

// waitHorizon waits until ReadAll's safe horizon (the oldest transaction
// still running anywhere on the server) has passed transaction xid, so that
// ReadAll returns every event written by xid and by older transactions.
// Nothing signals the horizon's moves, hence the polling; parallel tests
// and CREATE DATABASE elsewhere on the server hold it back briefly.
func waitHorizon(t testing.TB, ctx context.Context, pool *pgxpool.Pool, xid uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var passed bool
		err := pool.QueryRow(ctx, "SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::bigint::text::xid8", int64(xid)).Scan(&passed)
		if err != nil {
			t.Fatalf("wait for the horizon to pass xid %d: %v", xid, err)
		}
		if passed {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the horizon did not pass xid %d: %v", xid, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitSettled waits until ReadAll can return every committed event.
func waitSettled(t testing.TB, ctx context.Context, pool *pgxpool.Pool) {
	t.Helper()
	var last int64
	err := pool.QueryRow(ctx, `SELECT COALESCE((SELECT transaction_id::text::bigint FROM conduit.events
		ORDER BY transaction_id DESC LIMIT 1), 0)`).Scan(&last)
	if err != nil {
		t.Fatalf("last transaction id: %v", err)
	}
	waitHorizon(t, ctx, pool, uint64(last))
}

// countEvents counts the stored events of a stream ("" for all streams).
func countEvents(t testing.TB, ctx context.Context, pool *pgxpool.Pool, streamID string) int {
	t.Helper()
	var n int
	err := pool.QueryRow(ctx, "SELECT count(*) FROM conduit.events WHERE $1 = '' OR stream_id = $1", streamID).Scan(&n)
	if err != nil {
		t.Fatalf("count events: %v", err)
	}
	return n
}

// backendPID returns the server process id of tx's connection.
func backendPID(t testing.TB, ctx context.Context, tx pgx.Tx) int {
	t.Helper()
	var pid int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatalf("backend pid: %v", err)
	}
	return pid
}

// waitBlockedBy waits until some session waits for a lock held by the
// session with process id pid. Postgres has no signal for it, hence the
// polling.
func waitBlockedBy(t testing.TB, ctx context.Context, pool *pgxpool.Pool, pid int) {
	t.Helper()
	waitBlockedOrDone(t, ctx, pool, pid, nil, "")
}

// waitBlockedOrDone is waitBlockedBy failing, if done is not nil, when done
// says what should be blocked (named what) ended first.
func waitBlockedOrDone(t testing.TB, ctx context.Context, pool *pgxpool.Pool, pid int, done <-chan error, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		var blocked bool
		err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid)))", pid).Scan(&blocked)
		if err != nil {
			t.Fatalf("wait for a session blocked by %d: %v", pid, err)
		}
		if blocked {
			return
		}
		select {
		case err := <-done: // never, when done is nil
			t.Fatalf("%s did not wait for the transaction holding the lock (it returned %v)", what, err)
		case <-ctx.Done():
			t.Fatalf("no session got blocked by %d: %v", pid, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// withID returns e with the given id.
func withID(e conduit.EventData, id uuid.UUID) conduit.EventData {
	e.ID = id
	return e
}

// ids returns the events' ids.
func ids(events []conduit.Event) []uuid.UUID {
	out := make([]uuid.UUID, len(events))
	for i, e := range events {
		out[i] = e.ID
	}
	return out
}

// asConflict returns err as a *VersionConflictError matching
// ErrVersionConflict, failing the test otherwise.
func asConflict(t testing.TB, err error) *conduit.VersionConflictError {
	t.Helper()
	var vc *conduit.VersionConflictError
	if !errors.As(err, &vc) || !errors.Is(err, conduit.ErrVersionConflict) {
		t.Fatalf("err = %v, want a *VersionConflictError", err)
	}
	return vc
}

// forBatching runs test, in parallel subtests, with append batching on (the
// default) and off (Config.DisableAppendBatching); test adds its own
// settings to cfg.
func forBatching(t *testing.T, test func(t *testing.T, cfg *conduit.Config)) {
	for _, c := range []struct {
		name string
		off  bool
	}{{"batching", false}, {"alone", true}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			test(t, &conduit.Config{DisableAppendBatching: c.off})
		})
	}
}
