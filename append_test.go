package conduit_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/conduit-es/conduit"
)

// Writers racing with Exactly(v), each reloading the version after a
// conflict: every version has exactly one winner, versions have no gaps,
// losers get the typed conflict.
func TestAppendConcurrentExactly(t *testing.T) {
	t.Parallel()
	forBatching(t, testAppendConcurrentExactly)
}

func testAppendConcurrentExactly(t *testing.T, cfg *conduit.Config) {
	ctx := testContext(t)
	store, _ := newStore(t, cfg)
	const (
		writers = 8
		target  = 48 // versions to reach
	)
	var (
		mu        sync.Mutex
		winners   = map[int64]uuid.UUID{} // version -> event id
		conflicts int
		wg        sync.WaitGroup
		start     = make(chan struct{})
	)
	for w := range writers {
		wg.Go(func() {
			<-start
			for attempt := 0; ; attempt++ {
				v, err := store.StreamVersion(ctx, "race")
				if err != nil {
					t.Errorf("writer %d: version: %v", w, err)
					return
				}
				if v >= target {
					return
				}
				e := mustEvent(t, "written", map[string]int{"writer": w, "attempt": attempt})
				e.ID = uuid.New()
				res, err := store.Append(ctx, "race", conduit.Exactly(v), e)
				if err != nil {
					var vc *conduit.VersionConflictError
					if !errors.As(err, &vc) || !errors.Is(err, conduit.ErrVersionConflict) || !conduit.IsRetryable(err) {
						t.Errorf("writer %d: append at %d: %v", w, v, err)
						return
					}
					if vc.StreamID != "race" || vc.Expected != conduit.Exactly(v) || vc.Actual <= v || vc.Actual > target+writers {
						t.Errorf("writer %d: conflict at expected %d: %+v", w, v, vc)
					}
					mu.Lock()
					conflicts++
					mu.Unlock()
					continue
				}
				if res.Version != v+1 || res.Duplicate {
					t.Errorf("writer %d: append at %d gave %+v", w, v, res)
				}
				mu.Lock()
				if prev, dup := winners[res.Version]; dup {
					t.Errorf("version %d won twice: %s and %s", res.Version, prev, e.ID)
				}
				winners[res.Version] = e.ID
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()
	t.Logf("%d versions, %d conflicts", len(winners), conflicts)

	events := collect(t, store.ReadStream(ctx, "race", 1))
	if len(events) < target || len(events) != len(winners) {
		t.Fatalf("stream has %d events, %d winners, want at least %d", len(events), len(winners), target)
	}
	for i, e := range events {
		if e.StreamVersion != int64(i+1) {
			t.Fatalf("event %d has version %d: gap or disorder", i, e.StreamVersion)
		}
		if winners[e.StreamVersion] != e.ID {
			t.Fatalf("version %d holds %s, the winner was %s", e.StreamVersion, e.ID, winners[e.StreamVersion])
		}
	}
}

// Two NoStream appends started together: one wins, the other gets a
// conflict naming the winner's version.
func TestAppendRacingNoStream(t *testing.T) {
	t.Parallel()
	forBatching(t, testAppendRacingNoStream)
}

func testAppendRacingNoStream(t *testing.T, cfg *conduit.Config) {
	ctx := testContext(t)
	store, _ := newStore(t, cfg)
	for round := range 8 {
		stream := fmt.Sprintf("fresh-%d", round)
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			res   [2]conduit.AppendResult
			errs  [2]error
		)
		for i := range 2 {
			wg.Go(func() {
				<-start
				res[i], errs[i] = store.Append(ctx, stream, conduit.NoStream,
					mustEvent(t, "created", i), mustEvent(t, "named", i))
			})
		}
		close(start)
		wg.Wait()
		winner := 0
		if errs[0] != nil {
			winner = 1
		}
		if errs[winner] != nil || res[winner].Version != 2 {
			t.Fatalf("round %d: no winner: %+v %v", round, res, errs)
		}
		vc := asConflict(t, errs[1-winner])
		if vc.Actual != 2 || vc.Expected != conduit.NoStream || vc.StreamID != stream {
			t.Fatalf("round %d: conflict %+v, want actual 2", round, vc)
		}
		if n := countEvents(t, ctx, store.Pool(), stream); n != 2 {
			t.Fatalf("round %d: %d events stored, want the winner's 2", round, n)
		}
	}
}

// The race the version check cannot see: the first writer's events are not
// yet committed, so the second passes the check and waits on the unique
// index; when the first commits, the second must get a version conflict
// (from events_stream_version_key) carrying the committed version.
func TestAppendNoStreamBlockedByUncommitted(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := store.AppendTx(ctx, tx, "held", conduit.NoStream,
		mustEvent(t, "a", 1), mustEvent(t, "b", 2), mustEvent(t, "c", 3)); err != nil {
		t.Fatalf("AppendTx: %v", err)
	}
	pid := backendPID(t, ctx, tx)

	done := make(chan error, 1)
	go func() {
		_, err := store.Append(ctx, "held", conduit.NoStream, mustEvent(t, "other", 1))
		done <- err
	}()
	waitBlockedBy(t, ctx, pool, pid)
	select {
	case err := <-done:
		t.Fatalf("second append returned while the first was uncommitted: %v", err)
	default:
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	vc := asConflict(t, <-done)
	if vc.Actual != 3 || vc.Expected != conduit.NoStream || vc.StreamID != "held" {
		t.Fatalf("conflict = %+v, want actual 3", vc)
	}
	if n := countEvents(t, ctx, pool, "held"); n != 3 {
		t.Fatalf("%d events, want 3", n)
	}
}

// Any (and StreamExists) place no condition on the version, so an append
// that loses the race on the unique index to a concurrent append has not
// failed any expectation: it must land after the winner, not report a
// version conflict.
func TestAppendAnyNeverConflicts(t *testing.T) {
	t.Parallel()
	forBatching(t, testAppendAnyNeverConflicts)
}

func testAppendAnyNeverConflicts(t *testing.T, cfg *conduit.Config) {
	for _, expected := range []conduit.ExpectedVersion{conduit.Any, conduit.StreamExists} {
		t.Run(expected.String(), func(t *testing.T) {
			ctx := testContext(t)
			store, pool := newStore(t, cfg)
			if _, err := store.Append(ctx, "s", conduit.NoStream, mustEvent(t, "first", 0)); err != nil {
				t.Fatal(err)
			}
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck
			if _, err := store.AppendTx(ctx, tx, "s", expected, mustEvent(t, "held", 1)); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				res, err := store.Append(ctx, "s", expected, mustEvent(t, "waiting", 2))
				if err == nil && res.Version != 3 {
					err = fmt.Errorf("version %d, want 3", res.Version)
				}
				done <- err
			}()
			waitBlockedBy(t, ctx, pool, backendPID(t, ctx, tx))
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("append with %s after a concurrent append: %v", expected, err)
			}
		})
	}
}

// Each expected-version mode, where it holds and where it does not.
func TestAppendExpectedVersionModes(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	ev := func() conduit.EventData { return mustEvent(t, "e", 1) }

	ok := func(stream string, expected conduit.ExpectedVersion, wantVersion int64) {
		t.Helper()
		res, err := store.Append(ctx, stream, expected, ev())
		if err != nil || res.Version != wantVersion || res.Duplicate {
			t.Fatalf("append %q with %s = %+v, %v; want version %d", stream, expected, res, err, wantVersion)
		}
	}
	conflict := func(stream string, expected conduit.ExpectedVersion, wantActual int64) {
		t.Helper()
		before := countEvents(t, ctx, pool, "")
		_, err := store.Append(ctx, stream, expected, ev())
		vc := asConflict(t, err)
		if vc.StreamID != stream || vc.Expected != expected || vc.Actual != wantActual {
			t.Fatalf("append %q with %s: conflict %+v, want actual %d", stream, expected, vc, wantActual)
		}
		if after := countEvents(t, ctx, pool, ""); after != before {
			t.Fatalf("a refused append wrote %d events", after-before)
		}
	}

	// Any: no condition, on a new stream and an existing one.
	ok("any", conduit.Any, 1)
	ok("any", conduit.Any, 2)

	// NoStream.
	ok("no-stream", conduit.NoStream, 1)
	conflict("no-stream", conduit.NoStream, 1)

	// StreamExists.
	conflict("exists", conduit.StreamExists, 0)
	ok("exists", conduit.NoStream, 1)
	ok("exists", conduit.StreamExists, 2)
	ok("exists", conduit.StreamExists, 3)

	// Exactly, including Exactly(0) for a new stream.
	ok("exact", conduit.Exactly(0), 1)
	conflict("exact", conduit.Exactly(0), 1)
	ok("exact", conduit.Exactly(1), 2)
	conflict("exact", conduit.Exactly(1), 2)
	conflict("exact", conduit.Exactly(5), 2)
	conflict("exact-new", conduit.Exactly(3), 0)
	ok("exact", conduit.Exactly(2), 3)

	if n := countEvents(t, ctx, pool, ""); n != 2+1+3+3 {
		t.Fatalf("%d events stored", n)
	}
}

// Re-appending the same ids at the same place is an idempotent retry:
// success, Duplicate, the original result, nothing written.
func TestAppendIdempotentRetry(t *testing.T) {
	t.Parallel()
	forBatching(t, testAppendIdempotentRetry)
}

func testAppendIdempotentRetry(t *testing.T, cfg *conduit.Config) {
	ctx := testContext(t)
	store, pool := newStore(t, cfg)

	batch := func(n int) []conduit.EventData {
		out := make([]conduit.EventData, n)
		for i := range out {
			out[i] = withID(mustEvent(t, "e", i), uuid.New())
		}
		return out
	}
	retry := func(stream string, expected conduit.ExpectedVersion, events []conduit.EventData, want conduit.AppendResult) {
		t.Helper()
		before := countEvents(t, ctx, pool, "")
		again := append([]conduit.EventData(nil), events...)
		res, err := store.Append(ctx, stream, expected, again...)
		if err != nil {
			t.Fatalf("retry on %q with %s: %v", stream, expected, err)
		}
		if !res.Duplicate || res.Version != want.Version || res.Position != want.Position {
			t.Fatalf("retry on %q with %s = %+v, want duplicate of %+v", stream, expected, res, want)
		}
		if after := countEvents(t, ctx, pool, ""); after != before {
			t.Fatalf("retry on %q with %s wrote %d events", stream, expected, after-before)
		}
	}
	first := func(stream string, expected conduit.ExpectedVersion, events []conduit.EventData) conduit.AppendResult {
		t.Helper()
		res, err := store.Append(ctx, stream, expected, events...)
		if err != nil || res.Duplicate {
			t.Fatalf("append on %q with %s = %+v, %v", stream, expected, res, err)
		}
		return res
	}

	noStream := batch(3)
	noStreamRes := first("s-no-stream", conduit.NoStream, noStream)
	retry("s-no-stream", conduit.NoStream, noStream, noStreamRes)

	exact := batch(2)
	first("s-exact", conduit.NoStream, batch(1))
	res := first("s-exact", conduit.Exactly(1), exact)
	retry("s-exact", conduit.Exactly(1), exact, res)
	// The acknowledgement was lost and others appended since: still a retry.
	first("s-exact", conduit.Exactly(3), batch(1))
	retry("s-exact", conduit.Exactly(1), exact, res)

	exists := batch(2)
	first("s-exists", conduit.NoStream, batch(1))
	res = first("s-exists", conduit.StreamExists, exists)
	retry("s-exists", conduit.StreamExists, exists, res)

	anyBatch := batch(2)
	res = first("s-any", conduit.Any, anyBatch)
	retry("s-any", conduit.Any, anyBatch, res)
	first("s-any", conduit.Any, batch(1))
	retry("s-any", conduit.Any, anyBatch, res)

	// NewEvent fixes the ids, so retrying the same events is idempotent too.
	generated := []conduit.EventData{mustEvent(t, "g", 1), mustEvent(t, "g", 2)}
	res = first("s-generated", conduit.NoStream, generated)
	retry("s-generated", conduit.NoStream, generated, res)

	// AppendTx retries too.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	txRes, err := store.AppendTx(ctx, tx, "s-no-stream", conduit.NoStream, noStream...)
	if err != nil || txRes != (conduit.AppendResult{Version: 3, Position: noStreamRes.Position, Duplicate: true}) {
		t.Fatalf("AppendTx retry = %+v, %v", txRes, err)
	}

	if n := countEvents(t, ctx, pool, ""); n != 3+4+3+3+2 {
		t.Fatalf("%d events stored", n)
	}
}

// A used id anywhere else is a typed error, and nothing is written.
func TestAppendDuplicateEventID(t *testing.T) {
	t.Parallel()
	forBatching(t, testAppendDuplicateEventID)
}

func testAppendDuplicateEventID(t *testing.T, cfg *conduit.Config) {
	ctx := testContext(t)
	store, pool := newStore(t, cfg)
	used := uuid.New()
	if _, err := store.Append(ctx, "owner", conduit.NoStream,
		mustEvent(t, "e", 0), withID(mustEvent(t, "e", 1), used)); err != nil {
		t.Fatal(err)
	}
	before := countEvents(t, ctx, pool, "")

	check := func(name string, err error, wantStream string) {
		t.Helper()
		var de *conduit.DuplicateEventIDError
		if !errors.As(err, &de) || !errors.Is(err, conduit.ErrDuplicateEventID) {
			t.Fatalf("%s: err = %v, want *DuplicateEventIDError", name, err)
		}
		if de.EventID != used {
			t.Fatalf("%s: error names id %s, want %s", name, de.EventID, used)
		}
		if wantStream != "" && (de.StreamID != wantStream || de.Version != 2) {
			t.Fatalf("%s: error says %q v%d, want %q v2", name, de.StreamID, de.Version, wantStream)
		}
		if n := countEvents(t, ctx, pool, ""); n != before {
			t.Fatalf("%s: %d events written", name, n-before)
		}
	}

	_, err := store.Append(ctx, "other", conduit.Any, withID(mustEvent(t, "e", 2), used))
	check("another stream", err, "owner")
	_, err = store.Append(ctx, "owner", conduit.Exactly(2), withID(mustEvent(t, "e", 2), used))
	check("another version", err, "owner")
	_, err = store.Append(ctx, "owner", conduit.NoStream, withID(mustEvent(t, "e", 2), used))
	check("another expectation", err, "owner")
	_, err = store.Append(ctx, "other", conduit.NoStream, mustEvent(t, "e", 3), withID(mustEvent(t, "e", 4), used))
	check("a later event of the batch", err, "")

	// Within one batch: refused before anything is sent.
	dup := uuid.New()
	_, err = store.Append(ctx, "other", conduit.NoStream, withID(mustEvent(t, "e", 5), dup), withID(mustEvent(t, "e", 6), dup))
	var ve *conduit.ValidationError
	if !errors.As(err, &ve) || !errors.Is(err, conduit.ErrInvalidEvent) || ve.Field != "event id" || ve.Index != 1 {
		t.Fatalf("duplicate ids in a batch: err = %v", err)
	}
	if n := countEvents(t, ctx, pool, ""); n != before {
		t.Fatalf("%d events written", n-before)
	}
}

// The xid inversion (DESIGN.md §1): T2 writes first and so has the older
// transaction id; T1 appends to S and commits; T2's append to S would be
// read before T1's event in the global log, so it is refused with a
// retryable error that leaves T2 usable.
func TestAppendTxTransactionOrder(t *testing.T) {
	t.Parallel()
	forBatching(t, testAppendTxTransactionOrder)
}

func testAppendTxTransactionOrder(t *testing.T, cfg *conduit.Config) {
	ctx := testContext(t)
	store, pool := newStore(t, cfg)

	t2, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer t2.Rollback(ctx) //nolint:errcheck
	early, err := store.AppendTx(ctx, t2, "elsewhere", conduit.NoStream, mustEvent(t, "early", 0))
	if err != nil {
		t.Fatal(err)
	}

	t1, err := store.Append(ctx, "S", conduit.NoStream, mustEvent(t, "v1", 1))
	if err != nil {
		t.Fatal(err)
	}
	if t1.Position.TransactionID <= early.Position.TransactionID {
		t.Fatalf("setup: T1's xid %d is not younger than T2's %d", t1.Position.TransactionID, early.Position.TransactionID)
	}

	for _, expected := range []conduit.ExpectedVersion{conduit.Any, conduit.Exactly(1), conduit.StreamExists} {
		_, err = store.AppendTx(ctx, t2, "S", expected, mustEvent(t, "v2", 2))
		var toe *conduit.TransactionOrderError
		if !errors.As(err, &toe) || !errors.Is(err, conduit.ErrTransactionOrder) || !conduit.IsRetryable(err) {
			t.Fatalf("AppendTx with %s in the older transaction: err = %v, want *TransactionOrderError", expected, err)
		}
		if toe.StreamID != "S" || toe.Version != 1 {
			t.Fatalf("error = %+v", toe)
		}
	}
	// T2 is still usable: a status row, not a raised error.
	var n int
	if err := t2.QueryRow(ctx, "SELECT count(*) FROM conduit.events").Scan(&n); err != nil {
		t.Fatalf("T2 unusable after the refusal: %v", err)
	}
	if n != 2 {
		t.Fatalf("T2 sees %d events, want its own and T1's", n)
	}
	if err := t2.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	// The retry, in a new transaction, succeeds.
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := store.AppendTx(ctx, tx, "elsewhere", conduit.NoStream, mustEvent(t, "early", 0)); err != nil {
			return err
		}
		res, err := store.AppendTx(ctx, tx, "S", conduit.Any, mustEvent(t, "v2", 2))
		if err == nil && res.Version != 2 {
			err = fmt.Errorf("version %d, want 2", res.Version)
		}
		return err
	})
	if err != nil {
		t.Fatalf("retry: %v", err)
	}

	waitSettled(t, ctx, pool)
	var versions []int64
	for _, e := range collect(t, store.ReadAll(ctx, conduit.Position{})) {
		if e.StreamID == "S" {
			versions = append(versions, e.StreamVersion)
		}
	}
	if fmt.Sprint(versions) != "[1 2]" {
		t.Fatalf("ReadAll yields S's versions in order %v", versions)
	}
}

// UPDATE, DELETE and TRUNCATE on the events table are refused by the
// database itself.
func TestEventsImmutable(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	if _, err := store.Append(ctx, "s", conduit.NoStream, mustEvent(t, "e", map[string]int{"n": 1})); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`UPDATE conduit.events SET data = '{"n": 2}'`,
		`UPDATE conduit.events SET stream_id = 'other'`,
		`DELETE FROM conduit.events`,
		`DELETE FROM conduit.events WHERE stream_id = 's'`,
		`TRUNCATE conduit.events`,
	} {
		_, err := pool.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "CDI01" {
			t.Errorf("%s: err = %v, want SQLSTATE CDI01", sql, err)
		}
	}
	events := collect(t, store.ReadStream(ctx, "s", 1))
	if len(events) != 1 || string(events[0].Data) != `{"n": 1}` {
		t.Fatalf("events changed: %+v", events)
	}
}

// Any and StreamExists promise no conflict: however hard concurrent appends
// race for the next versions of a few shared streams, none of them surfaces
// as a version conflict, from Append or from AppendTx.
func TestAppendAnyUnderContention(t *testing.T) {
	t.Parallel()
	forBatching(t, testAppendAnyUnderContention)
}

func testAppendAnyUnderContention(t *testing.T, cfg *conduit.Config) {
	for _, tx := range []bool{false, true} {
		t.Run(fmt.Sprintf("tx=%v", tx), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			store, pool := newStore(t, cfg)
			const writers, streams, perWriter = 8, 3, 60
			for s := range streams {
				if _, err := store.Append(ctx, fmt.Sprintf("s-%d", s), conduit.NoStream, mustEvent(t, "opened", 0)); err != nil {
					t.Fatal(err)
				}
			}
			var wg sync.WaitGroup
			errs := make(chan error, writers*perWriter)
			for w := range writers {
				wg.Go(func() {
					for i := range perWriter {
						stream := fmt.Sprintf("s-%d", (w+i)%streams)
						expected := conduit.Any
						if i%2 == 1 {
							expected = conduit.StreamExists
						}
						events := []conduit.EventData{mustEvent(t, "e", i)}
						if i%3 == 0 {
							events = append(events, mustEvent(t, "e", -i))
						}
						var err error
						if tx {
							err = store.InTx(ctx, func(tx pgx.Tx) error {
								_, err := store.AppendTx(ctx, tx, stream, expected, events...)
								return err
							})
						} else {
							_, err = store.Append(ctx, stream, expected, events...)
						}
						if err != nil {
							errs <- fmt.Errorf("writer %d, append %d to %s with %s: %w", w, i, stream, expected, err)
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			want := streams + writers*perWriter + writers*((perWriter+2)/3)
			if n := countEvents(t, ctx, pool, ""); n != want {
				t.Fatalf("%d events stored, want %d", n, want)
			}
			for s := range streams {
				checkStreamGapless(t, store, fmt.Sprintf("s-%d", s))
			}
		})
	}
}

// An AppendTx with Any that loses the race for the next version to a
// concurrent transaction appends after it, and the caller's transaction
// stays usable.
func TestAppendTxAnyAfterConcurrentCommit(t *testing.T) {
	t.Parallel()
	for _, expected := range []conduit.ExpectedVersion{conduit.Any, conduit.StreamExists} {
		t.Run(expected.String(), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			store, pool := newStore(t, nil)
			if _, err := store.Append(ctx, "s", conduit.NoStream, mustEvent(t, "first", 0)); err != nil {
				t.Fatal(err)
			}
			holder, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer holder.Rollback(ctx) //nolint:errcheck
			if _, err := store.AppendTx(ctx, holder, "s", expected, mustEvent(t, "held", 1)); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				done <- store.InTx(ctx, func(tx pgx.Tx) error {
					res, err := store.AppendTx(ctx, tx, "s", expected, mustEvent(t, "waiting", 2), mustEvent(t, "waiting", 3))
					if err != nil {
						return err
					}
					if res.Version != 4 {
						return fmt.Errorf("version %d, want 4", res.Version)
					}
					// The transaction is still usable.
					_, err = tx.Exec(ctx, "SELECT 1")
					return err
				})
			}()
			waitBlockedBy(t, ctx, pool, backendPID(t, ctx, holder))
			if err := holder.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("AppendTx with %s after a concurrent commit: %v", expected, err)
			}
			if n := checkStreamGapless(t, store, "s"); n != 4 {
				t.Fatalf("stream has %d events, want 4", n)
			}
		})
	}
}

// checkStreamGapless checks that the stream's versions run 1..n without a
// gap and that its order is the global log's order; it returns n.
func checkStreamGapless(t testing.TB, store *conduit.Store, stream string) int64 {
	t.Helper()
	var last conduit.Event
	for _, e := range collect(t, store.ReadStream(testContext(t), stream, 1)) {
		if e.StreamVersion != last.StreamVersion+1 || (last.StreamVersion > 0 && !last.Position.Before(e.Position)) {
			t.Fatalf("stream %s: version %d at %s follows version %d at %s", stream, e.StreamVersion, e.Position,
				last.StreamVersion, last.Position)
		}
		last = e
	}
	return last.StreamVersion
}
