package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/conduittest"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// result is one run of the command.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit code %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// run runs the command in-process against url (none if empty), with stdin.
func run(t testing.TB, url, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if url != "" {
		args = append([]string{"--database-url", url}, args...)
	}
	var out, errOut bytes.Buffer
	code := Run(ctx, args, strings.NewReader(stdin), &out, &errOut)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// mustRun runs the command and fails the test unless it exits with code.
func mustRun(t testing.TB, code int, url, stdin string, args ...string) result {
	t.Helper()
	r := run(t, url, stdin, args...)
	if r.code != code {
		t.Fatalf("conduit %s: want exit code %d, got %s", strings.Join(args, " "), code, r)
	}
	return r
}

// decode parses a --json output into v.
func decode[T any](t testing.TB, r result) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("decode %T: %v\n%s", v, err, r)
	}
	return v
}

// emptyDatabase returns the URL of a fresh database without Conduit's schema.
func emptyDatabase(t testing.TB) string {
	t.Helper()
	noop := func(context.Context, *pgxpool.Pool) error { return nil }
	return pgtest.URLFor(t, pgtest.NewDB(t, fstest.MapFS{}, noop))
}

// migratedDatabase returns the URL of a fresh migrated database and a
// Store on it.
func migratedDatabase(t testing.TB) (string, *conduit.Store) {
	t.Helper()
	url := conduittest.NewDatabase(t)
	store, err := conduit.NewStore(pgtest.Connect(t, url), &conduit.Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	return url, store
}

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually polls cond every 10ms until it holds, or fails after a minute.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testProjection applies nothing and fails on events of type "poison".
type testProjection struct{ name string }

func (p testProjection) Name() string { return p.name }

func (p testProjection) Apply(_ context.Context, _ pgx.Tx, e conduit.Event) error {
	if e.Type == "poison" {
		return errors.New("cannot digest " + e.StreamID)
	}
	return nil
}

// runProjector runs a projector of projection name until the test ends.
func runProjector(t testing.TB, store *conduit.Store, name string, cfg *conduit.ProjectorConfig) {
	t.Helper()
	p, err := conduit.NewProjector(store, testProjection{name: name}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// waitState polls the projection's status until it is in state.
func waitState(t testing.TB, store *conduit.Store, name string, state conduit.ProjectionState) conduit.ProjectionStatus {
	t.Helper()
	var st conduit.ProjectionStatus
	eventually(t, name+" in state "+string(state), func() bool {
		var err error
		st, err = store.ProjectionStatus(context.Background(), name)
		return err == nil && st.State == state
	})
	return st
}

// appendEvents appends n events of type typ to stream, in one call.
func appendEvents(t testing.TB, store *conduit.Store, stream, typ string, n int) conduit.AppendResult {
	t.Helper()
	events := make([]conduit.EventData, n)
	for i := range events {
		e, err := conduit.NewEvent(typ, map[string]int{"i": i})
		if err != nil {
			t.Fatal(err)
		}
		events[i] = e
	}
	res, err := store.Append(testContext(t), stream, conduit.Any, events...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}
