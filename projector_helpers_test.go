package conduit_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// ledgerTable records every application of every event, without any unique
// constraint, so that an event applied twice shows up as two rows.
const ledgerTable = "public.ledger"

func createLedger(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	_, err := pool.Exec(context.Background(), `CREATE TABLE `+ledgerTable+` (
		seq bigserial PRIMARY KEY, event_id uuid NOT NULL, stream_id text NOT NULL,
		stream_version bigint NOT NULL, transaction_id bigint NOT NULL, global_position bigint NOT NULL,
		applied_by text NOT NULL DEFAULT '')`)
	if err != nil {
		t.Fatal(err)
	}
}

// ledger is a projection writing one ledger row per event it is given.
type ledger struct {
	name  string
	by    string
	fail  func(e conduit.Event) error // optional: a non-nil error makes Apply fail
	types []string
}

func (l *ledger) Name() string { return l.name }

func (l *ledger) ReadTables() []string { return []string{ledgerTable} }

func (l *ledger) EventTypes() []string { return l.types }

func (l *ledger) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	if l.fail != nil {
		if err := l.fail(e); err != nil {
			return err
		}
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+conduit.Table(ctx, ledgerTable)+` (event_id, stream_id, stream_version, transaction_id, global_position, applied_by)
		VALUES ($1, $2, $3, $4, $5, $6)`, e.ID, e.StreamID, e.StreamVersion, int64(e.Position.TransactionID), e.Position.GlobalPosition, l.by)
	return err
}

// ledgerRow is one application.
type ledgerRow struct {
	EventID        string
	StreamID       string
	StreamVersion  int64
	TransactionID  int64
	GlobalPosition int64
}

func readLedger(t testing.TB, pool *pgxpool.Pool) []ledgerRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT event_id::text, stream_id, stream_version, transaction_id, global_position FROM `+ledgerTable+` ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[ledgerRow])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkLedgerMatchesLog asserts the ledger holds every event of the log
// exactly once, in global log order.
func checkLedgerMatchesLog(t testing.TB, store *conduit.Store, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	var want []string
	rows, err := pool.Query(ctx, `SELECT event_id::text FROM conduit.events ORDER BY transaction_id, global_position`)
	if err != nil {
		t.Fatal(err)
	}
	want, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	got := readLedger(t, pool)
	if len(got) != len(want) {
		t.Fatalf("ledger has %d rows, log has %d events", len(got), len(want))
	}
	for i := range want {
		if got[i].EventID != want[i] {
			t.Fatalf("ledger row %d is event %s, log has %s there", i, got[i].EventID, want[i])
		}
	}
}

// runProjector starts p.Run in a goroutine; the returned stop cancels it and
// waits, failing the test if Run returned an error.
func runProjector(t testing.TB, p *conduit.Projector) (stop func()) {
	t.Helper()
	return runWorker(t, "projector "+p.Name(), p.Run)
}

// runWorker runs run (a Projector's or a Relay's Run) in a goroutine until
// stop, or the test's end, and fails the test if it returns an error or
// does not stop.
func runWorker(t testing.TB, name string, run func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: Run: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop", name)
		}
	}
	t.Cleanup(stop)
	return stop
}

func appendN(t testing.TB, store *conduit.Store, stream string, n int) conduit.AppendResult {
	t.Helper()
	var res conduit.AppendResult
	for i := range n {
		var err error
		res, err = store.Append(context.Background(), stream, conduit.Any, mustEvent(t, "tick", map[string]int{"n": i}))
		if err != nil {
			t.Fatalf("append: %v", err)
		}
	}
	return res
}

func waitFor(t testing.TB, store *conduit.Store, projection string, pos conduit.Position) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := store.WaitFor(ctx, projection, pos); err != nil {
		st, _ := store.ProjectionStatus(context.Background(), projection)
		t.Fatalf("WaitFor %s: %v (status %+v)", pos, err, st)
	}
}

// checkStreamAppliedInOrder asserts the ledger applied the stream's events
// in version order, 1 to wantLast.
func checkStreamAppliedInOrder(t testing.TB, pool *pgxpool.Pool, stream string, wantLast int64) {
	t.Helper()
	var last int64
	for _, r := range readLedger(t, pool) {
		if r.StreamID == stream {
			if r.StreamVersion != last+1 {
				t.Fatalf("stream %s applied version %d after %d", stream, r.StreamVersion, last)
			}
			last = r.StreamVersion
		}
	}
	if last != wantLast {
		t.Fatalf("stream %s: applied up to version %d, want %d", stream, last, wantLast)
	}
}

var _ = fmt.Sprint
