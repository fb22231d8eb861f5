package conduit_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
)

// checkGlobalOrder fails unless events are in strictly increasing
// (transaction id, global position) order.
func checkGlobalOrder(t *testing.T, events []conduit.Event) {
	t.Helper()
	for i := 1; i < len(events); i++ {
		if !events[i-1].Position.Before(events[i].Position) {
			t.Fatalf("event %d at %v does not come after event %d at %v", i, events[i].Position, i-1, events[i-1].Position)
		}
	}
}

// A transaction that appended and is still open holds ReadAll back: later
// commits are not returned past it, and once it commits a reader resuming
// from its last position gets it, then the later ones, each once.
func TestReadAllLateCommit(t *testing.T) {
	t.Parallel()
	forBatching(t, testReadAllLateCommit)
}

func testReadAllLateCommit(t *testing.T, cfg *conduit.Config) {
	ctx := testContext(t)
	store, pool := newStore(t, cfg)

	var before []uuid.UUID
	for i := range 3 {
		e := withID(mustEvent(t, "before", i), uuid.New())
		if _, err := store.Append(ctx, fmt.Sprintf("before-%d", i), conduit.NoStream, e); err != nil {
			t.Fatal(err)
		}
		before = append(before, e.ID)
	}

	held, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback(ctx) //nolint:errcheck
	heldEvent := withID(mustEvent(t, "held", 0), uuid.New())
	heldRes, err := store.AppendTx(ctx, held, "held", conduit.NoStream, heldEvent)
	if err != nil {
		t.Fatal(err)
	}

	var later []uuid.UUID
	var lastLater conduit.AppendResult
	for i := range 3 {
		e := withID(mustEvent(t, "later", i), uuid.New())
		if lastLater, err = store.Append(ctx, fmt.Sprintf("later-%d", i), conduit.NoStream, e); err != nil {
			t.Fatal(err)
		}
		if !heldRes.Position.Before(lastLater.Position) {
			t.Fatalf("setup: later event at %v not after the held one at %v", lastLater.Position, heldRes.Position)
		}
		later = append(later, e.ID)
	}

	// Every event before the held transaction is readable, none after.
	waitHorizon(t, ctx, pool, heldRes.Position.TransactionID-1)
	seen := collect(t, store.ReadAll(ctx, conduit.Position{}))
	if !slices.Equal(ids(seen), before) {
		t.Fatalf("ReadAll with a transaction held open = %v, want exactly the earlier events %v", ids(seen), before)
	}
	checkGlobalOrder(t, seen)
	last := seen[len(seen)-1].Position
	if again := collect(t, store.ReadAll(ctx, last)); len(again) != 0 {
		t.Fatalf("ReadAll passed the open transaction: %v", ids(again))
	}

	if err := held.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitHorizon(t, ctx, pool, lastLater.Position.TransactionID)
	rest := collect(t, store.ReadAll(ctx, last))
	want := append([]uuid.UUID{heldEvent.ID}, later...)
	if !slices.Equal(ids(rest), want) {
		t.Fatalf("ReadAll after the commit = %v, want the held event then the later ones %v", ids(rest), want)
	}
	checkGlobalOrder(t, rest)
	if rest[0].Position != heldRes.Position {
		t.Fatalf("held event read at %v, appended at %v", rest[0].Position, heldRes.Position)
	}
	all := collect(t, store.ReadAll(ctx, conduit.Position{}))
	if !slices.Equal(ids(all), append(before, want...)) {
		t.Fatalf("ReadAll from the start = %v", ids(all))
	}
}

// A rolled-back append leaves a hole in the positions; it must not stall
// ReadAll.
func TestReadAllRolledBackDoesNotStall(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	first, err := store.Append(ctx, "a", conduit.NoStream, mustEvent(t, "a", 0))
	if err != nil {
		t.Fatal(err)
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rolledBack := withID(mustEvent(t, "rolled back", 0), uuid.New())
	if _, err := store.AppendTx(ctx, tx, "b", conduit.NoStream, rolledBack); err != nil {
		t.Fatal(err)
	}
	later := withID(mustEvent(t, "later", 0), uuid.New())
	laterRes, err := store.Append(ctx, "c", conduit.NoStream, later)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	waitHorizon(t, ctx, pool, laterRes.Position.TransactionID)
	got := collect(t, store.ReadAll(ctx, first.Position))
	if len(got) != 1 || got[0].ID != later.ID {
		t.Fatalf("ReadAll after a rollback = %v, want only %s", ids(got), later.ID)
	}
}

// Small pages: ReadStream and ReadAll page through many events without
// duplicates, gaps or disorder, including when the count is a multiple of
// the page size.
func TestReadPaging(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	const page = 7
	store, pool := newStore(t, &conduit.Config{ReadPageSize: page})

	streams := map[string]int{"long": 0, "exact": 0, "short": 0}
	sizes := map[string]int{"long": 53, "exact": 3 * page, "short": 5}
	var appended []uuid.UUID // in append (commit) order
	for round := 0; ; round++ {
		progress := false
		for _, s := range []string{"long", "exact", "short"} {
			n := min(sizes[s]-streams[s], 1+round%4)
			if n <= 0 {
				continue
			}
			progress = true
			batch := make([]conduit.EventData, n)
			for i := range batch {
				batch[i] = withID(mustEvent(t, "e", map[string]any{"stream": s, "n": streams[s] + i + 1}), uuid.New())
				appended = append(appended, batch[i].ID)
			}
			if _, err := store.Append(ctx, s, conduit.Exactly(int64(streams[s])), batch...); err != nil {
				t.Fatal(err)
			}
			streams[s] += n
		}
		if !progress {
			break
		}
	}

	for s, size := range sizes {
		events := collect(t, store.ReadStream(ctx, s, 1))
		if len(events) != size {
			t.Fatalf("ReadStream(%q) returned %d events, want %d", s, len(events), size)
		}
		for i, e := range events {
			if e.StreamVersion != int64(i+1) || e.StreamID != s {
				t.Fatalf("ReadStream(%q)[%d] is %q v%d", s, i, e.StreamID, e.StreamVersion)
			}
		}
		checkGlobalOrder(t, events)
		v, err := store.StreamVersion(ctx, s)
		if err != nil || v != int64(size) {
			t.Fatalf("StreamVersion(%q) = %d, %v; want %d", s, v, err, size)
		}
		// From a middle version, across page boundaries.
		from := int64(size/2 + 1)
		tail := collect(t, store.ReadStream(ctx, s, from))
		if !slices.Equal(ids(tail), ids(events[from-1:])) {
			t.Fatalf("ReadStream(%q, %d) = %d events, want %d", s, from, len(tail), size-int(from)+1)
		}
		if past := collect(t, store.ReadStream(ctx, s, int64(size+1))); len(past) != 0 {
			t.Fatalf("ReadStream past the end returned %d events", len(past))
		}
	}

	waitSettled(t, ctx, pool)
	all := collect(t, store.ReadAll(ctx, conduit.Position{}))
	if !slices.Equal(ids(all), appended) {
		t.Fatalf("ReadAll returned %d events, want the %d appended, in order", len(all), len(appended))
	}
	checkGlobalOrder(t, all)
	// Resuming from positions on and off page boundaries.
	for _, k := range []int{1, page - 1, page, 2*page + 3, len(all) - 1} {
		rest := collect(t, store.ReadAll(ctx, all[k-1].Position))
		if !slices.Equal(ids(rest), ids(all[k:])) {
			t.Fatalf("ReadAll after event %d returned %d events, want %d", k, len(rest), len(all)-k)
		}
	}
	// Stopping early stops the iteration.
	n := 0
	for _, err := range store.ReadAll(ctx, conduit.Position{}) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == page+2 {
			break
		}
	}
}

// Streams that do not exist read as empty, at version 0.
func TestReadUnknownStream(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)
	if _, err := store.Append(ctx, "known", conduit.NoStream, mustEvent(t, "e", 1)); err != nil {
		t.Fatal(err)
	}
	if events := collect(t, store.ReadStream(ctx, "unknown", 1)); len(events) != 0 {
		t.Fatalf("unknown stream yielded %d events", len(events))
	}
	if v, err := store.StreamVersion(ctx, "unknown"); err != nil || v != 0 {
		t.Fatalf("StreamVersion(unknown) = %d, %v", v, err)
	}
	if v, err := store.StreamVersion(ctx, "known"); err != nil || v != 1 {
		t.Fatalf("StreamVersion(known) = %d, %v", v, err)
	}
	// fromVersion 0 or below means from the start.
	if events := collect(t, store.ReadStream(ctx, "known", 0)); len(events) != 1 {
		t.Fatalf("ReadStream from 0 yielded %d events", len(events))
	}
}

// On a database restored from a logical dump into another cluster (before
// conduit.rebase_transaction_ids()), appends and ReadAll fail loudly with
// ErrRestoredDatabase naming the fix, instead of a "retryable" refusal and
// an empty log; after the fix both work.
func TestRestoredDatabaseAppendAndReadAll(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	for i := range 3 {
		if _, err := store.Append(ctx, fmt.Sprintf("s-%d", i), conduit.NoStream, repeatEvents(100)...); err != nil {
			t.Fatal(err)
		}
	}
	for _, sql := range []string{
		`ALTER TABLE conduit.events DISABLE TRIGGER events_immutable`,
		`UPDATE conduit.events SET transaction_id = (transaction_id::text::bigint + 1000000000)::text::xid8`,
		`ALTER TABLE conduit.events ENABLE TRIGGER events_immutable`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	checkRestored := func(what string, err error) {
		t.Helper()
		var rde *conduit.RestoredDatabaseError
		if !errors.Is(err, conduit.ErrRestoredDatabase) || !errors.As(err, &rde) ||
			!strings.Contains(err.Error(), "conduit.rebase_transaction_ids()") {
			t.Fatalf("%s: err = %v, want ErrRestoredDatabase naming the fix", what, err)
		}
		if conduit.IsRetryable(err) || conduit.IsRefused(err) || conduit.IsOutcomeUnknown(err) {
			t.Fatalf("%s: ErrRestoredDatabase is classified as retryable", what)
		}
	}
	_, err := store.Append(ctx, "s-0", conduit.Any, mustEvent(t, "after", 1))
	checkRestored("Append to an existing stream", err)
	err = store.InTx(ctx, func(tx pgx.Tx) error {
		_, err := store.AppendTx(ctx, tx, "s-1", conduit.Exactly(100), mustEvent(t, "after", 1))
		return err
	})
	checkRestored("AppendTx", err)
	var read int
	for _, err := range store.ReadAll(ctx, conduit.Position{}) {
		if err != nil {
			checkRestored("ReadAll", err)
			break
		}
		read++
	}
	if read != 0 {
		t.Fatalf("ReadAll yielded %d events before failing", read)
	}
	for _, err := range store.ReadAll(ctx, conduit.Position{}) {
		if err == nil {
			t.Fatal("ReadAll yielded an event on a restored database")
		}
		checkRestored("ReadAll", err)
	}

	if _, err := pool.Exec(ctx, `SELECT conduit.rebase_transaction_ids()`); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, "s-0", conduit.Exactly(100), mustEvent(t, "after", 1)); err != nil {
		t.Fatalf("Append after the rebase: %v", err)
	}
	waitSettled(t, ctx, pool)
	if n := len(collect(t, store.ReadAll(ctx, conduit.Position{}))); n != 301 {
		t.Fatalf("ReadAll after the rebase read %d events, want 301", n)
	}
}
