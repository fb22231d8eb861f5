package conduit_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/conduit-es/conduit"
)

func ev(typ, data string) conduit.EventData {
	return conduit.EventData{Type: typ, Data: json.RawMessage(data)}
}

func evMeta(data, metadata string) conduit.EventData {
	return conduit.EventData{Type: "t", Data: json.RawMessage(data), Metadata: json.RawMessage(metadata)}
}

func repeatEvents(n int) []conduit.EventData {
	out := make([]conduit.EventData, n)
	for i := range out {
		out[i] = ev("t", "{}")
	}
	return out
}

type badInput struct {
	name     string
	stream   string
	expected conduit.ExpectedVersion
	events   []conduit.EventData
	field    string
	index    int
	tooLarge bool
	// appendTooLarge: the whole append is over a limit (ErrAppendTooLarge).
	appendTooLarge bool
}

// checkRefused fails unless err is a *ValidationError for the case.
func checkRefused(t *testing.T, c badInput, err error) {
	t.Helper()
	var ve *conduit.ValidationError
	if !errors.As(err, &ve) || !errors.Is(err, conduit.ErrInvalidEvent) {
		t.Fatalf("%s: err = %v, want a *ValidationError", c.name, err)
	}
	if ve.Field != c.field || ve.Index != c.index {
		t.Fatalf("%s: error names field %q index %d, want %q index %d (%v)", c.name, ve.Field, ve.Index, c.field, c.index, err)
	}
	if errors.Is(err, conduit.ErrEventTooLarge) != c.tooLarge {
		t.Fatalf("%s: errors.Is(err, ErrEventTooLarge) = %v (%v)", c.name, !c.tooLarge, err)
	}
	if errors.Is(err, conduit.ErrAppendTooLarge) != c.appendTooLarge {
		t.Fatalf("%s: errors.Is(err, ErrAppendTooLarge) = %v (%v)", c.name, !c.appendTooLarge, err)
	}
}

// Every kind of bad input is refused with a typed error naming the field,
// before anything is written, in Append and in AppendTx (whose transaction
// stays usable).
func TestValidation(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	small, err := conduit.NewStore(pool, &conduit.Config{MaxEventSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	big := `"` + strings.Repeat("x", conduit.MaxEventSizeDefault) + `"`
	ok := ev("t", "{}")
	fits := big[:conduit.MaxEventSizeDefault-1] + `"` // exactly MaxEventSizeDefault bytes

	cases := []badInput{
		{name: "empty type", events: []conduit.EventData{ok, ev("", "{}")}, field: "type", index: 1},
		{name: "type over 255 bytes", events: []conduit.EventData{ev(strings.Repeat("é", 128), "{}")}, field: "type"},
		{name: "type invalid UTF-8", events: []conduit.EventData{ev("bad\xff", "{}")}, field: "type"},
		{name: "type with NUL", events: []conduit.EventData{ev("a\x00b", "{}")}, field: "type"},
		{name: "empty stream id", stream: "-", events: []conduit.EventData{ok}, field: "stream id", index: -1},
		{name: "stream id over 2048 bytes", stream: strings.Repeat("s", conduit.MaxStreamIDLength+1), events: []conduit.EventData{ok}, field: "stream id", index: -1},
		{name: "stream id invalid UTF-8", stream: "s\xff", events: []conduit.EventData{ok}, field: "stream id", index: -1},
		{name: "stream id with NUL", stream: "s\x00", events: []conduit.EventData{ok}, field: "stream id", index: -1},
		{name: "empty data", events: []conduit.EventData{ev("t", "")}, field: "data"},
		{name: "data not JSON", events: []conduit.EventData{ok, ok, ev("t", `{"a":`)}, field: "data", index: 2},
		{name: "data two values", events: []conduit.EventData{ev("t", `{} {}`)}, field: "data"},
		{name: `data with \u0000`, events: []conduit.EventData{ev("t", `{"a":"x\u0000y"}`)}, field: "data"},
		{name: `data with \u0000 in a key`, events: []conduit.EventData{ev("t", `{"\u0000":1}`)}, field: "data"},
		{name: `data with \u0000 after an escaped backslash`, events: []conduit.EventData{ev("t", `["\\\u0000"]`)}, field: "data"},
		{name: "metadata not JSON", events: []conduit.EventData{evMeta("{}", "nope")}, field: "metadata"},
		{name: `metadata with \u0000`, events: []conduit.EventData{evMeta("{}", `{"a":"\u0000"}`)}, field: "metadata"},
		{name: "event over 1 MiB", events: []conduit.EventData{ev("t", big)}, field: "data", tooLarge: true},
		{name: "data and metadata over 1 MiB", events: []conduit.EventData{evMeta(big[:conduit.MaxEventSizeDefault-8]+`"`, `{"k":"vvvvvvvvv"}`)}, field: "data", tooLarge: true},
		{name: "no events", events: nil, field: "events", index: -1},
		{name: "more than 10,000 events", events: repeatEvents(conduit.MaxEventsPerAppend + 1), field: "events", index: -1, appendTooLarge: true},
		{name: "over 16 MiB in all", events: slices.Repeat([]conduit.EventData{ev("t", fits)}, 17), field: "events", index: -1, appendTooLarge: true},
		{name: "expected version -7", expected: conduit.ExpectedVersion(-7), events: []conduit.EventData{ok}, field: "expected version", index: -1},
		{name: "Exactly(-1)", expected: conduit.Exactly(-1), events: []conduit.EventData{ok}, field: "expected version", index: -1},
		{name: "Exactly(-2)", expected: conduit.Exactly(-2), events: []conduit.EventData{ok}, field: "expected version", index: -1},
		{name: "Exactly(-3)", expected: conduit.Exactly(-3), events: []conduit.EventData{ok}, field: "expected version", index: -1},
		{name: "Exactly(-42)", expected: conduit.Exactly(-42), events: []conduit.EventData{ok}, field: "expected version", index: -1},
	}
	for i := range cases {
		c := &cases[i]
		switch c.stream {
		case "":
			c.stream = "s"
		case "-":
			c.stream = ""
		}
		if c.expected == 0 {
			c.expected = conduit.Any
		}
	}

	for _, c := range cases {
		_, err := store.Append(ctx, c.stream, c.expected, c.events...)
		checkRefused(t, c, err)
	}
	// A custom limit.
	_, err = small.Append(ctx, "s", conduit.Any, ev("t", `"`+strings.Repeat("x", 99)+`"`))
	checkRefused(t, badInput{name: "custom MaxEventSize", field: "data", index: 0, tooLarge: true}, err)
	_, err = small.Append(ctx, "s", conduit.Any, evMeta(`"`+strings.Repeat("x", 48)+`"`, `"`+strings.Repeat("x", 49)+`"`))
	checkRefused(t, badInput{name: "custom MaxEventSize with metadata", field: "data", index: 0, tooLarge: true}, err)
	smallAppends, err := conduit.NewStore(pool, &conduit.Config{MaxEventSize: 100, MaxAppendSize: 250})
	if err != nil {
		t.Fatal(err)
	}
	hundred := ev("t", `"`+strings.Repeat("x", 98)+`"`)
	_, err = smallAppends.Append(ctx, "s", conduit.Any, hundred, hundred, evMeta(`"`+strings.Repeat("x", 48)+`"`, `{}`))
	checkRefused(t, badInput{name: "custom MaxAppendSize", field: "events", index: -1, appendTooLarge: true}, err)
	if n := countEvents(t, ctx, pool, ""); n != 0 {
		t.Fatalf("refused appends wrote %d events", n)
	}

	// In AppendTx the caller's transaction stays usable.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	for _, c := range cases {
		_, err := store.AppendTx(ctx, tx, c.stream, c.expected, c.events...)
		checkRefused(t, c, err)
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatalf("%s: transaction unusable after the refusal: %v", c.name, err)
		}
	}
	if _, err := store.AppendTx(ctx, tx, "s", conduit.NoStream, ok); err != nil {
		t.Fatalf("AppendTx after refusals: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countEvents(t, ctx, pool, ""); n != 1 {
		t.Fatalf("%d events stored, want 1", n)
	}
}

// Input at the limits is accepted.
func TestValidationLimitsAccepted(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	small, err := conduit.NewStore(pool, &conduit.Config{MaxEventSize: 100})
	if err != nil {
		t.Fatal(err)
	}

	accepted := []struct {
		name   string
		store  *conduit.Store
		stream string
		events []conduit.EventData
	}{
		{"type of 255 bytes", store, "a", []conduit.EventData{ev(strings.Repeat("t", conduit.MaxEventTypeLength), "{}")}},
		{"stream id of 2048 bytes", store, strings.Repeat("s", conduit.MaxStreamIDLength), []conduit.EventData{ev("t", "{}")}},
		{"event of exactly 1 MiB", store, "b", []conduit.EventData{ev("t", `"`+strings.Repeat("x", conduit.MaxEventSizeDefault-2)+`"`)}},
		{"event of exactly the custom limit", small, "c", []conduit.EventData{evMeta(`"`+strings.Repeat("x", 48)+`"`, `"`+strings.Repeat("x", 48)+`"`)}},
		{"escaped backslash then u0000 text", store, "d", []conduit.EventData{ev("t", `{"a":"\\u0000","b\\u0000":"\\\\u0000"}`)}},
		{"other escapes", store, "e", []conduit.EventData{ev("t", `{"a":"\u0001\"\u00e9\ud83d\ude00"}`)}},
		{"JSON null data", store, "f", []conduit.EventData{ev("t", `null`)}},
	}
	for _, c := range accepted {
		if _, err := c.store.Append(ctx, c.stream, conduit.NoStream, c.events...); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	got := collect(t, store.ReadStream(ctx, "d", 1))
	var decoded map[string]string
	if len(got) != 1 || json.Unmarshal(got[0].Data, &decoded) != nil ||
		decoded["a"] != `\u0000` || decoded[`b\u0000`] != `\\u0000` {
		t.Fatalf("escaped backslash round trip: %s", got[0].Data)
	}
	got = collect(t, store.ReadStream(ctx, "e", 1))
	if len(got) != 1 || json.Unmarshal(got[0].Data, &decoded) != nil || decoded["a"] != "\u0001\"é😀" {
		t.Fatalf("escapes round trip: %s", got[0].Data)
	}
}

// jsonb refuses more than \u0000: text that is not UTF-8 and lone UTF-16
// surrogates fail in the database, which is not a typed error and aborts an
// AppendTx caller's transaction. Both are invalid JSON text for PostgreSQL
// and must be refused before anything is sent.
func TestValidationJSONPostgresCannotStore(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	cases := []badInput{
		{name: "data not UTF-8", events: []conduit.EventData{ev("t", "{\"a\":\"\xff\"}")}, field: "data"},
		{name: "data with a lone high surrogate", events: []conduit.EventData{ev("t", `{"a":"\ud800"}`)}, field: "data"},
		{name: "data with a lone low surrogate", events: []conduit.EventData{ev("t", `["\udc00"]`)}, field: "data"},
		{name: "metadata not UTF-8", events: []conduit.EventData{evMeta("{}", "\"\xfe\"")}, field: "metadata"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := store.Append(ctx, "s", conduit.Any, c.events...)
			checkRefused(t, c, err)

			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck
			_, err = store.AppendTx(ctx, tx, "s", conduit.Any, c.events...)
			checkRefused(t, c, err)
			if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatalf("transaction unusable after the refusal: %v", err)
			}
		})
	}
}

// Stream ids with quotes, semicolons, backslashes, unicode and 1 KB round
// trip exactly.
func TestStreamIDRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	streams := []string{
		`it's "quoted"`,
		`a; DROP TABLE conduit.events; --`,
		`back\slash\\double\\\`,
		`percent % and underscore _ and star *`,
		"emoji 🎉🚀 and CJK 中文ストリーム 한국어",
		"tab\tnewline\nspace ",
		strings.Repeat("é", 512), // 1024 bytes
		strings.Repeat("k", 1024),
		strings.Repeat("界", 682), // 2046 bytes
	}
	for i, s := range streams {
		if _, err := store.Append(ctx, s, conduit.NoStream, mustEvent(t, "e", i)); err != nil {
			t.Fatalf("append to %q: %v", s, err)
		}
	}
	for i, s := range streams {
		events := collect(t, store.ReadStream(ctx, s, 1))
		if len(events) != 1 || events[0].StreamID != s || string(events[0].Data) != string(mustEvent(t, "e", i).Data) {
			t.Fatalf("ReadStream(%q) = %+v", s, events)
		}
		if v, err := store.StreamVersion(ctx, s); err != nil || v != 1 {
			t.Fatalf("StreamVersion(%q) = %d, %v", s, v, err)
		}
	}
	waitSettled(t, ctx, pool)
	var read []string
	for _, e := range collect(t, store.ReadAll(ctx, conduit.Position{})) {
		read = append(read, e.StreamID)
	}
	if !slices.Equal(read, streams) {
		t.Fatalf("ReadAll stream ids = %q, want %q", read, streams)
	}
	// No prefix or pattern matching: a similar id is another stream.
	if v, err := store.StreamVersion(ctx, `it's "quoted`); err != nil || v != 0 {
		t.Fatalf("prefix id has version %d, %v", v, err)
	}
}

// The most events one append takes, in one call.
func TestAppendMaxEvents(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	events := make([]conduit.EventData, conduit.MaxEventsPerAppend)
	for i := range events {
		events[i] = mustEvent(t, "bulk", i)
	}
	res, err := store.Append(ctx, "bulk", conduit.NoStream, events...)
	if err != nil {
		t.Fatal(err)
	}
	if res.Version != conduit.MaxEventsPerAppend {
		t.Fatalf("version %d", res.Version)
	}
	if n := countEvents(t, ctx, pool, "bulk"); n != conduit.MaxEventsPerAppend {
		t.Fatalf("%d events stored", n)
	}
	read := collect(t, store.ReadStream(ctx, "bulk", 1))
	if len(read) != conduit.MaxEventsPerAppend || read[9999].StreamVersion != 10000 || string(read[9999].Data) != "9999" ||
		read[9999].Position != res.Position || read[0].ID != events[0].ID {
		t.Fatalf("read %d events; last %+v", len(read), read[len(read)-1])
	}
}
