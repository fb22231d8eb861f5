package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/dbgen"
)

func TestAppendReadStream(t *testing.T) {
	t.Parallel()
	url, _ := migratedDatabase(t)

	r := mustRun(t, ExitOK, url, "", "append", "order-1", "placed", `{"customer":"c-7"}`, "--expect", "no-stream")
	if !strings.Contains(r.stdout, "appended to order-1: version 1") {
		t.Fatalf("append:\n%s", r)
	}
	// The expectation fails: nothing written, exit code 4, a hint.
	r = mustRun(t, ExitConflict, url, "", "append", "order-1", "placed", `{}`, "--expect", "no-stream")
	if !strings.Contains(r.stderr, "version conflict") || !strings.Contains(r.stderr, "hint: read the stream again") {
		t.Fatalf("conflict:\n%s", r)
	}
	mustRun(t, ExitConflict, url, "", "append", "order-1", "item_added", `{}`, "--expect", "5")
	// Data from standard input, an exact version, metadata and an id.
	id := uuid.Must(uuid.NewV7())
	a := decode[appendJSON](t, mustRun(t, ExitOK, url, `{"sku":"A1","qty":2}`+"\n", "append", "order-1", "item_added", "-",
		"--expect", "1", "--metadata", `{"by":"cli"}`, "--id", id.String(), "--json"))
	if a.Version != 2 || a.EventID != id || a.Duplicate || a.StreamID != "order-1" {
		t.Fatalf("append --json: %+v", a)
	}
	pos, err := conduit.ParsePosition(a.Position)
	if err != nil || pos.IsZero() {
		t.Fatalf("append position %q: %v", a.Position, err)
	}
	// The same id at the same place again: an idempotent retry.
	again := decode[appendJSON](t, mustRun(t, ExitOK, url, `{"sku":"A1","qty":2}`, "append", "order-1", "item_added", "-",
		"--expect", "1", "--id", id.String(), "--json"))
	if !again.Duplicate || again.Version != 2 {
		t.Fatalf("retry: %+v", again)
	}
	mustRun(t, ExitOK, url, "", "append", "order-1", "shipped", "--expect", "exists")

	// Refusals of the input.
	for _, bad := range [][]string{
		{"append", "order-1", "x", "{}", "--expect", "sometimes"},
		{"append", "order-1", "x", "{}", "--id", "not-a-uuid"},
		{"append", "order-1"},
		{"append", "order-1", "x", "{}", "extra"},
		{"read"},
		{"stream", "a", "b"},
		{"append", "order-1", "x", "{}", "--no-such-flag"},
	} {
		r := mustRun(t, ExitUsage, url, "", bad...)
		if !strings.Contains(r.stderr, "conduit: ") {
			t.Errorf("%v: no error on stderr:\n%s", bad, r)
		}
	}
	r = mustRun(t, ExitError, url, "", "append", "order-1", "x", "{not json")
	if !strings.Contains(r.stderr, "invalid") {
		t.Fatalf("invalid JSON:\n%s", r)
	}

	events := decode[[]eventJSON](t, mustRun(t, ExitOK, url, "", "read", "order-1", "--json"))
	if len(events) != 3 || events[0].Type != "placed" || events[1].Type != "item_added" || events[2].Type != "shipped" {
		t.Fatalf("read --json: %+v", events)
	}
	if compact(t, events[1].Metadata) != `{"by":"cli"}` || events[1].ID != id || events[1].Position != a.Position ||
		compact(t, events[2].Metadata) != "null" || compact(t, events[2].Data) != "{}" {
		t.Fatalf("read --json, second and third events: %+v", events[1:])
	}
	some := decode[[]eventJSON](t, mustRun(t, ExitOK, url, "", "read", "order-1", "--from", "2", "--limit", "1", "--json"))
	if len(some) != 1 || some[0].Version != 2 {
		t.Fatalf("read --from 2 --limit 1: %+v", some)
	}
	r = mustRun(t, ExitOK, url, "", "read", "order-1")
	if lines := strings.Split(strings.TrimSpace(r.stdout), "\n"); len(lines) != 4 || !strings.HasPrefix(lines[0], "VERSION") ||
		!strings.Contains(lines[2], `{"qty": 2, "sku": "A1"}`) {
		t.Fatalf("read:\n%s", r)
	}
	if none := decode[[]eventJSON](t, mustRun(t, ExitOK, url, "", "read", "nobody", "--json")); len(none) != 0 {
		t.Fatalf("read of an empty stream: %+v", none)
	}

	s := decode[streamJSON](t, mustRun(t, ExitOK, url, "", "stream", "order-1", "--json"))
	if s.Version != 3 || s.First == nil || s.First.Version != 1 || s.Last == nil || s.Last.Type != "shipped" {
		t.Fatalf("stream --json: %+v", s)
	}
	r = mustRun(t, ExitOK, url, "", "stream", "order-1")
	if !strings.Contains(r.stdout, "version  3") || !strings.Contains(r.stdout, "shipped") {
		t.Fatalf("stream:\n%s", r)
	}
	r = mustRun(t, ExitNotFound, url, "", "stream", "nobody")
	if !strings.Contains(r.stderr, `stream "nobody" has no events`) {
		t.Fatalf("stream of nothing:\n%s", r)
	}
}

// tail follows the log as a projector reads it: an event whose transaction
// is still open holds back those committed after it, and comes first once
// it commits; ending the context ends tail with exit code 0.
func TestTailIsGapSafe(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	ctx := testContext(t)
	first := appendEvents(t, store, "before", "old", 2)

	// tail starts after the last event below the safe horizon: wait until
	// other tests' transactions, open when "before" committed, have ended.
	eventually(t, "the safe head to pass the first events", func() bool {
		r, err := dbgen.New(store.Pool()).LogSafeHeadGet(ctx)
		return err == nil && !(conduit.Position{TransactionID: r.TransactionID, GlobalPosition: r.GlobalPosition}).Before(first.Position)
	})

	tailCtx, stop := context.WithCancel(ctx)
	var out, errOut syncBuffer
	done := make(chan int)
	go func() {
		done <- Run(tailCtx, []string{"--database-url", url, "tail", "--json", "--interval", "20ms"}, strings.NewReader(""), &out, &errOut)
	}()
	// tail starts at the end: it waits for its session to show before appending.
	eventually(t, "tail's session", func() bool {
		var n int
		err := store.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
		     WHERE datname = current_database() AND application_name = $1`, ApplicationName).Scan(&n)
		return err == nil && n > 0
	})

	// An append in an open transaction, then one that commits after it.
	tx, err := store.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // committed below
	late := mustEvent(t, "late")
	if _, err := store.AppendTx(ctx, tx, "held", conduit.Any, late); err != nil {
		t.Fatal(err)
	}
	appendEvents(t, store, "after", "new", 1)
	// The later event is committed, but tail must not pass the open one.
	appendEvents(t, store, "probe", "probe", 1)
	// Absence takes a window to observe: ten of tail's polls, woken by the
	// appends' notifications too. A tail that passed the open transaction
	// would print "after" now, and "held" out of order later.
	time.Sleep(200 * time.Millisecond)
	if s := out.String(); s != "" {
		t.Fatalf("tail printed events past an open transaction:\n%s", s)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	store.Notify()

	eventually(t, "tail to print three events", func() bool { return strings.Count(out.String(), "\n") >= 3 })
	stop()
	if code := <-done; code != ExitOK {
		t.Fatalf("tail ended with exit code %d:\n%s\n%s", code, out.String(), errOut.String())
	}
	var got []eventJSON
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	for sc.Scan() {
		var e eventJSON
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("tail line %q: %v", sc.Text(), err)
		}
		got = append(got, e)
	}
	if len(got) != 3 || got[0].StreamID != "held" || got[0].ID != late.ID || got[1].StreamID != "after" || got[2].StreamID != "probe" {
		t.Fatalf("tail printed %+v; want held, after, probe (not the events before it started: %s)", got, first.Position)
	}

	// --from resumes after a position; start reads the whole log.
	r := run(t, url, "", "tail", "--from", "bogus")
	if r.code != ExitUsage || !strings.Contains(r.stderr, "--from") {
		t.Fatalf("tail --from bogus:\n%s", r)
	}
	all := tailOnce(t, store, url, "start")
	if len(all) != 5 || all[0].StreamID != "before" {
		t.Fatalf("tail --from start: %+v", all)
	}
	after := tailOnce(t, store, url, all[1].Position)
	if len(after) != 3 || after[0].ID != late.ID {
		t.Fatalf("tail --from %s: %+v", all[1].Position, after)
	}
}

// tailOnce runs tail --from from until it has printed what the log holds.
func tailOnce(t *testing.T, store *conduit.Store, url, from string) []eventJSON {
	t.Helper()
	ctx, stop := context.WithCancel(testContext(t))
	var out, errOut syncBuffer
	done := make(chan int)
	go func() {
		done <- Run(ctx, []string{"--database-url", url, "tail", "--from", from, "--json"}, strings.NewReader(""), &out, &errOut)
	}()
	var want int
	pos, err := conduit.ParsePosition(strings.Replace(from, "start", "0/0", 1))
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range store.ReadAll(ctx, pos) {
		if err != nil {
			t.Fatal(err)
		}
		want++
	}
	eventually(t, "tail to print the log", func() bool { return strings.Count(out.String(), "\n") >= want })
	stop()
	if code := <-done; code != ExitOK {
		t.Fatalf("tail: exit code %d: %s", code, errOut.String())
	}
	var got []eventJSON
	for line := range strings.Lines(out.String()) {
		var e eventJSON
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	return got
}

func mustEvent(t testing.TB, typ string) conduit.EventData {
	t.Helper()
	e, err := conduit.NewEvent(typ, map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func compact(t testing.TB, b json.RawMessage) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}
