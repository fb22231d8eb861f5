package conduit_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// The README's own call, sent twice as a client does when the commit
// acknowledgement is lost: the second call stores nothing and says so.
func TestAppendRetryWithNewEvent(t *testing.T) {
	t.Parallel()
	forBatching(t, testAppendRetryWithNewEvent)
}

func testAppendRetryWithNewEvent(t *testing.T, cfg *conduit.Config) {
	for _, expected := range []conduit.ExpectedVersion{conduit.NoStream, conduit.Any, conduit.StreamExists, conduit.Exactly(0)} {
		t.Run(expected.String(), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			store, pool := newStore(t, cfg)
			if expected == conduit.StreamExists {
				if _, err := store.Append(ctx, "s", conduit.NoStream, mustEvent(t, "opened", 0)); err != nil {
					t.Fatal(err)
				}
			}
			a, _ := conduit.NewEvent("x", 1)
			b, _ := conduit.NewEvent("y", 2)
			first, err := store.Append(ctx, "s", expected, a, b)
			if err != nil {
				t.Fatal(err)
			}
			before := countEvents(t, ctx, pool, "s")
			again, err := store.Append(ctx, "s", expected, a, b)
			if err != nil {
				t.Fatalf("retry: %v", err)
			}
			if !again.Duplicate || again.Version != first.Version || again.Position != first.Position {
				t.Fatalf("retry = %+v, want a duplicate of %+v", again, first)
			}
			if n := countEvents(t, ctx, pool, "s"); n != before {
				t.Fatalf("retry stored %d more events", n-before)
			}
		})
	}
}

// NewEvent fixes the event's identity; each call makes a new one.
func TestNewEventAssignsID(t *testing.T) {
	a, err := conduit.NewEvent("x", 1)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := conduit.NewEvent("x", 1)
	if a.ID == uuid.Nil || b.ID == uuid.Nil || a.ID == b.ID {
		t.Fatalf("ids %s and %s: want two distinct non-zero ids", a.ID, b.ID)
	}
	if a.ID.Version() != 7 {
		t.Fatalf("id %s is a version %d UUID, want 7", a.ID, a.ID.Version())
	}
}

// Append reads its arguments and never writes into them: a hand-built event
// with a zero id keeps its zero id (and so is a new event at every call).
func TestAppendDoesNotWriteIntoArguments(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	events := []conduit.EventData{{Type: "hand", Data: []byte(`1`)}, {Type: "hand", Data: []byte(`2`)}}
	for _, call := range []func() error{
		func() error { _, err := store.Append(ctx, "s", conduit.Any, events...); return err },
		func() error {
			return store.InTx(ctx, func(tx pgx.Tx) error {
				_, err := store.AppendTx(ctx, tx, "s", conduit.Any, events...)
				return err
			})
		},
	} {
		if err := call(); err != nil {
			t.Fatal(err)
		}
		if events[0].ID != uuid.Nil || events[1].ID != uuid.Nil {
			t.Fatalf("Append wrote ids into its arguments: %v", events)
		}
	}
	// Zero ids are new events at every call: documented, not a retry.
	if n := countEvents(t, ctx, pool, "s"); n != 4 {
		t.Fatalf("%d events stored, want 4", n)
	}
}

// One slice of events appended to several streams at once, from several
// goroutines: no data race (run with -race), and no id is sent twice, so
// every stream but the first gets a typed duplicate-id refusal rather than a
// silent second copy.
func TestAppendSharedSliceAcrossStreams(t *testing.T) {
	t.Parallel()
	forBatching(t, testAppendSharedSliceAcrossStreams)
}

func testAppendSharedSliceAcrossStreams(t *testing.T, cfg *conduit.Config) {
	ctx := testContext(t)
	store, pool := newStore(t, cfg)
	shared := []conduit.EventData{mustEvent(t, "x", 1), mustEvent(t, "y", 2)}
	hand := []conduit.EventData{{Type: "hand", Data: []byte(`{}`)}}

	const streams = 8
	var wg sync.WaitGroup
	errs := make([]error, streams)
	handErrs := make([]error, streams)
	for i := range streams {
		wg.Go(func() {
			_, errs[i] = store.Append(ctx, fmt.Sprintf("s-%d", i), conduit.NoStream, shared...)
			_, handErrs[i] = store.Append(ctx, fmt.Sprintf("h-%d", i), conduit.NoStream, hand...)
		})
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, conduit.ErrDuplicateEventID):
		default:
			t.Fatalf("stream %d: %v", i, err)
		}
		if handErrs[i] != nil {
			t.Fatalf("hand-built event on stream h-%d: %v", i, handErrs[i])
		}
	}
	if ok != 1 {
		t.Fatalf("%d streams took the shared events, want exactly 1", ok)
	}
	var distinct int
	if err := pool.QueryRow(ctx, `SELECT count(DISTINCT event_id) FROM conduit.events`).Scan(&distinct); err != nil {
		t.Fatal(err)
	}
	if want := 2 + streams; distinct != want || countEvents(t, ctx, pool, "") != want {
		t.Fatalf("%d distinct ids in %d events, want %d", distinct, countEvents(t, ctx, pool, ""), want)
	}
}

// A reused id that is not the first of its append is still located, by a
// query: the server's DETAIL text is translated under a non-English
// lc_messages and must not be parsed.
func TestDuplicateEventIDLocatedWhateverTheLanguage(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, pool := newStore(t, nil)
	german := germanPool(t, ctx, pool)
	store, err := conduit.NewStore(german, nil)
	if err != nil {
		t.Fatal(err)
	}
	used := mustEvent(t, "used", 1)
	if _, err := store.Append(ctx, "first", conduit.NoStream, used); err != nil {
		t.Fatal(err)
	}
	for _, expected := range []conduit.ExpectedVersion{conduit.NoStream, conduit.Any} {
		_, err := store.Append(ctx, "second-"+expected.String(), expected, mustEvent(t, "new", 2), used)
		var dup *conduit.DuplicateEventIDError
		if !errors.As(err, &dup) {
			t.Fatalf("%s: err = %v, want *DuplicateEventIDError", expected, err)
		}
		if dup.EventID != used.ID || dup.StreamID != "first" || dup.Version != 1 {
			t.Fatalf("%s: located %+v, want %s at first v1", expected, dup, used.ID)
		}
	}
	// Inside a caller's transaction too (the lookup cannot use the
	// transaction: a unique violation aborted it).
	err = pgx.BeginFunc(ctx, german, func(tx pgx.Tx) error {
		_, err := store.AppendTx(ctx, tx, "third", conduit.Any, mustEvent(t, "new", 3), used)
		return err
	})
	var dup *conduit.DuplicateEventIDError
	if !errors.As(err, &dup) || dup.EventID != used.ID || dup.StreamID != "first" {
		t.Fatalf("AppendTx: err = %v, want *DuplicateEventIDError locating %s", err, used.ID)
	}
}

// germanPool returns a pool on pool's database whose sessions get their
// messages in German. Without the de_DE.UTF-8 locale on the server the test
// is skipped, except in CI (.ci/run installs the locale), where it fails.
func germanPool(t *testing.T, ctx context.Context, pool *pgxpool.Pool) *pgxpool.Pool {
	t.Helper()
	cfg := pool.Config().Copy()
	cfg.ConnConfig.RuntimeParams["lc_messages"] = "de_DE.UTF-8"
	german, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = german.Ping(ctx)
	}
	if err != nil {
		if german != nil {
			german.Close()
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("server cannot speak German (locale de_DE.UTF-8 missing?): %v", err)
		}
		t.Skipf("server cannot speak German (create the locale de_DE.UTF-8 and restart PostgreSQL): %v", err)
	}
	t.Cleanup(german.Close)
	_, err = german.Exec(ctx, "SELECT 1/0")
	if err == nil || !strings.Contains(err.Error(), "Division durch Null") {
		t.Fatalf("lc_messages=de_DE.UTF-8 gave %v", err)
	}
	return german
}
