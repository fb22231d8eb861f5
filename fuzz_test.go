package conduit_test

// Fuzz targets for input validation. Their seed corpora (the f.Add calls and
// testdata/fuzz/<target>/) run with every `go test`; `make fuzz` fuzzes each
// target for FUZZTIME. The property throughout: input is either refused with
// a typed error (*ValidationError matching ErrInvalidEvent, *ConfigError
// matching ErrInvalidConfig) naming a field the documented rules refuse, with
// nothing written; or accepted, and then what is read back is what was given.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// appendInput is a fuzz input for an append, decoded.
type appendInput struct {
	stream     string
	typ        string
	data, meta []byte
	expected   conduit.ExpectedVersion
	// shape bits 0-1: events appended to the stream first (0 to 3);
	// bits 2-3: events in the append (1 to 3, copies of one); bit 4:
	// AppendTx (FuzzAppend); bit 5: zero ids, bit 6: the second event
	// reuses the first's id (FuzzValidate).
	prior, count    int
	tx              bool
	zeroIDs, dupIDs bool
	// The store's Config.MaxEventSize and Config.MaxAppendSize.
	maxEvent, maxAppend int
}

func newAppendInput(cfg *conduit.Config, stream, typ string, data, meta []byte, expected int64, shape uint8) appendInput {
	return appendInput{
		maxEvent: cfg.MaxEventSize, maxAppend: cfg.MaxAppendSize,
		stream: stream, typ: typ, data: data, meta: meta, expected: conduit.ExpectedVersion(expected),
		prior: int(shape & 3), count: 1 + int(shape>>2&3)%3, tx: shape&0x10 != 0,
		zeroIDs: shape&0x20 != 0, dupIDs: shape&0x40 != 0,
	}
}

// events returns the append's events: count copies of one, with fresh ids
// (zero ids with zeroIDs; the second reusing the first's with dupIDs).
func (in appendInput) events(t *testing.T) []conduit.EventData {
	events := make([]conduit.EventData, in.count)
	for i := range events {
		events[i] = conduit.EventData{Type: in.typ, Data: in.data, Metadata: in.meta}
		if !in.zeroIDs {
			id, err := uuid.NewV7()
			if err != nil {
				t.Fatal(err)
			}
			events[i].ID = id
		}
	}
	if in.dupIDs && in.count > 1 {
		events[1].ID = events[0].ID
	}
	return events
}

// invalidFields returns the fields the documented limits refuse, judging
// JSON by jsonbRefusal.
func (in appendInput) invalidFields() map[string]bool {
	eventSize := len(in.data) + len(in.meta)
	invalid := map[string]bool{
		"stream id":        !validStreamID(in.stream),
		"expected version": !validExpected(in.expected),
		"events":           in.count*eventSize > in.maxAppend,
		"type":             !validEventType(in.typ),
		"data":             len(in.data) == 0 || eventSize > in.maxEvent || jsonbRefusal(in.data) != "",
		"metadata":         len(in.meta) > 0 && jsonbRefusal(in.meta) != "",
		"event id":         in.dupIDs && !in.zeroIDs && in.count > 1,
	}
	out := map[string]bool{}
	for field, bad := range invalid {
		if bad {
			out[field] = true
		}
	}
	return out
}

// checkRefusal fails unless err is a *ValidationError naming one of the
// invalid fields, with size sentinels only where a size is over its limit.
func (in appendInput) checkRefusal(t *testing.T, err error, invalid map[string]bool) {
	t.Helper()
	var ve *conduit.ValidationError
	if !errors.As(err, &ve) || !errors.Is(err, conduit.ErrInvalidEvent) || !conduit.IsRefused(err) {
		t.Fatalf("err = %v (%T), want a *ValidationError for one of %v", err, err, invalid)
	}
	if !invalid[ve.Field] {
		t.Fatalf("refusal names field %q (%v), want one of %v", ve.Field, err, invalid)
	}
	perEvent := ve.Field != "stream id" && ve.Field != "expected version" && ve.Field != "events"
	if perEvent && (ve.Index < 0 || ve.Index >= in.count) || !perEvent && ve.Index != -1 {
		t.Fatalf("refusal of %q names event %d of %d (%v)", ve.Field, ve.Index, in.count, err)
	}
	eventSize := len(in.data) + len(in.meta)
	if errors.Is(err, conduit.ErrEventTooLarge) && (ve.Field != "data" || eventSize <= in.maxEvent) {
		t.Fatalf("ErrEventTooLarge for field %q, event of %d bytes: %v", ve.Field, eventSize, err)
	}
	if errors.Is(err, conduit.ErrAppendTooLarge) && (ve.Field != "events" || in.count*eventSize <= in.maxAppend) {
		t.Fatalf("ErrAppendTooLarge for field %q, %d bytes in all: %v", ve.Field, in.count*eventSize, err)
	}
}

// appendSeeds adds the seed inputs made in code, for a store with cfg's
// limits: the large ones, at and beyond the limits (those larger than
// cfg.MaxEventSize only where they fit). The small interesting inputs are
// files in testdata/fuzz/FuzzAppend.
func appendSeeds(f *testing.F, cfg *conduit.Config) {
	limit, appendLimit := cfg.MaxEventSize, cfg.MaxAppendSize
	str := func(n int) []byte { return []byte(`"` + strings.Repeat("x", n-2) + `"`) } // a JSON string of n bytes
	nested := func(depth int) []byte {
		return []byte(strings.Repeat("[", depth) + strings.Repeat("]", depth))
	}
	anyVersion := int64(conduit.Any)
	three := uint8(2 << 2) // shape: three events
	type seed struct {
		stream, typ string
		data, meta  []byte
		expected    int64
		shape       uint8
	}
	seeds := []seed{
		{"s", "t", []byte(`{}`), nil, anyVersion, 0},
		{strings.Repeat("s", conduit.MaxStreamIDLength), "t", []byte(`{}`), nil, anyVersion, 0},
		{strings.Repeat("s", conduit.MaxStreamIDLength+1), "t", []byte(`{}`), nil, anyVersion, 0},
		{strings.Repeat("é", conduit.MaxStreamIDLength/2), "t", []byte(`{}`), nil, anyVersion, 0},       // 2048 bytes, 1024 runes
		{strings.Repeat("界", conduit.MaxStreamIDLength/3) + "ab", "t", []byte(`1`), nil, anyVersion, 0}, // 2048 bytes
		{strings.Repeat("é", conduit.MaxStreamIDLength/2) + "s", "t", []byte(`{}`), nil, anyVersion, 0}, // 2049 bytes
		{"s", strings.Repeat("t", conduit.MaxEventTypeLength), []byte(`{}`), nil, anyVersion, 0},
		{"s", strings.Repeat("t", conduit.MaxEventTypeLength+1), []byte(`{}`), nil, anyVersion, 0},
		{"s", strings.Repeat("é", 127) + "t", []byte(`{}`), nil, anyVersion, 0}, // 255 bytes
		{"s", strings.Repeat("é", 128), []byte(`{}`), nil, anyVersion, 0},       // 256 bytes
		{"s", "t", str(limit), nil, anyVersion, 0},                              // exactly MaxEventSize
		{"s", "t", str(limit + 1), nil, anyVersion, 0},                          // one byte over
		{"s", "t", str(limit - 100), str(100), anyVersion, 0},                   // data and metadata at the limit
		{"s", "t", str(limit - 100), str(101), anyVersion, 0},                   // one over
		{"s", "t", str(min(limit, appendLimit/3)), nil, anyVersion, three},      // three events within MaxAppendSize
		{"s", "t", []byte(`"` + strings.Repeat(`\ud83d\ude00`, min((limit-2)/12, 1000)) + `"`), nil, anyVersion, 0},
		{"s", "t", []byte(`{}`), nil, math.MinInt64, 0},
		{"s", "t", []byte(`{}`), nil, math.MaxInt64, 0},
	}
	if appendLimit/3+1 <= limit {
		seeds = append(seeds, seed{"s", "t", str(appendLimit/3 + 1), nil, anyVersion, three}) // three events, over
	}
	for _, s := range []seed{
		{"s", "t", nested(jsonMaxDepth), nil, anyVersion, 0},                             // encoding/json's deepest
		{"s", "t", nested(jsonMaxDepth + 1), nil, anyVersion, 0},                         // refused, though jsonb could store it
		{"s", "t", []byte("1" + strings.Repeat("0", 131071)), nil, anyVersion, 0},        // numeric's largest magnitude
		{"s", "t", []byte("-0." + strings.Repeat("0", 16382) + "1"), nil, anyVersion, 0}, // numeric's finest scale
	} {
		if len(s.data) <= limit {
			seeds = append(seeds, s)
		}
	}
	for _, s := range seeds {
		f.Add(s.stream, s.typ, s.data, s.meta, s.expected, s.shape)
	}
}

// FuzzValidate: the public API's validation without a server (AppendTx,
// StreamVersionTx and ReadStreamTx through a stub transaction), against the
// documented rules and jsonbRefusal. Refused input reaches no query; accepted
// input reaches exactly one, carrying the input's strings byte for byte and
// one distinct id per event; the events passed in are never written to.
func FuzzValidate(f *testing.F) {
	// Small limits, which the fuzzer can reach.
	cfg := &conduit.Config{MaxEventSize: 1000, MaxAppendSize: 2500}
	appendSeeds(f, cfg)
	addCorpus(f, "testdata/fuzz/FuzzAppend")
	store, err := conduit.NewStore(offlinePool(f), cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, stream, typ string, data, meta []byte, expected int64, shape uint8) {
		ctx := t.Context()
		in := newAppendInput(cfg, stream, typ, data, meta, expected, shape)
		events := in.events(t)
		given := make([]conduit.EventData, len(events))
		for i, e := range events {
			given[i] = conduit.EventData{ID: e.ID, Type: e.Type, Data: bytes.Clone(e.Data), Metadata: bytes.Clone(e.Metadata)}
		}
		tx := &stubTx{}
		_, err := store.AppendTx(ctx, tx, in.stream, in.expected, events...)
		invalid := in.invalidFields()
		if len(invalid) > 0 {
			in.checkRefusal(t, err, invalid)
			if len(tx.queries) != 0 {
				t.Fatalf("refused (%v), but sent %d queries", err, len(tx.queries))
			}
		} else {
			if !errors.Is(err, errReachedDatabase) || len(tx.queries) != 1 {
				t.Fatalf("valid input: err = %v after %d queries, want it sent in one", err, len(tx.queries))
			}
			checkSent(t, in, events, tx.queries[0])
		}
		for i, e := range events {
			g := given[i]
			if e.ID != g.ID || e.Type != g.Type || !bytes.Equal(e.Data, g.Data) || !bytes.Equal(e.Metadata, g.Metadata) {
				t.Fatalf("the append wrote into event %d", i)
			}
		}

		// Reads check the stream id the same way.
		readTx := &stubTx{}
		_, verr := store.StreamVersionTx(ctx, readTx, in.stream)
		var rerr error
		for _, err := range store.ReadStreamTx(ctx, readTx, in.stream, 1) {
			rerr = err
			break
		}
		for _, err := range []error{verr, rerr} {
			var ve *conduit.ValidationError
			switch {
			case validStreamID(in.stream) && !errors.Is(err, errReachedDatabase):
				t.Fatalf("read of a valid stream id: %v, want it sent", err)
			case !validStreamID(in.stream) && (!errors.As(err, &ve) || ve.Field != "stream id"):
				t.Fatalf("read of an invalid stream id: %v, want a *ValidationError", err)
			}
		}
		want := 0
		if validStreamID(in.stream) {
			want = 2
		}
		if len(readTx.queries) != want {
			t.Fatalf("reads sent %d queries, want %d", len(readTx.queries), want)
		}
	})
}

// checkSent fails unless a query's arguments carry the append's input
// unchanged: the stream id, and per event its type, data and metadata, and
// an id (the event's own, or a fresh one for a zero id), all distinct.
func checkSent(t *testing.T, in appendInput, events []conduit.EventData, args []any) {
	t.Helper()
	repeat := func(s string) []string { return slices.Repeat([]string{s}, in.count) }
	if !slices.Contains(args, any(in.stream)) {
		t.Fatalf("stream id %q not sent as is: %v", in.stream, args)
	}
	for what, list := range map[string][]string{"types": repeat(in.typ), "data": repeat(string(in.data)), "metadata": repeat(string(in.meta))} {
		if !sentStrings(args, list) {
			t.Fatalf("%s not sent as given", what)
		}
	}
	for _, a := range args {
		if list, ok := a.([]string); ok && sentIDs(list, events) {
			return
		}
	}
	t.Fatalf("no argument carries one distinct id per event (given %v): %v", events, args)
}

// sentIDs reports whether list is the events' ids: their own, or a fresh one
// for a zero id, all distinct.
func sentIDs(list []string, events []conduit.EventData) bool {
	if len(list) != len(events) {
		return false
	}
	seen := map[uuid.UUID]bool{}
	for i, s := range list {
		id, err := uuid.Parse(s)
		if err != nil || id == uuid.Nil || seen[id] || events[i].ID != uuid.Nil && events[i].ID != id {
			return false
		}
		seen[id] = true
	}
	return true
}

// appendHarness runs FuzzAppend's inputs against one database.
type appendHarness struct {
	store *conduit.Store
	pool  *pgxpool.Pool
	n     int // inputs so far, for unique stream ids
}

// FuzzAppend: appends against PostgreSQL. Input refused by the documented
// rules is refused with a *ValidationError and writes nothing; valid input
// at the wrong version is refused with a *VersionConflictError carrying the
// actual version and writes nothing; valid input at the right version is
// stored, and ReadStream returns it: the stream id and type byte for byte,
// data and metadata as the same JSON. Refusals leave an AppendTx caller's
// transaction usable. The JSON oracle (jsonbRefusal) is checked against the
// server's own jsonb input on every input.
//
// Each input appends to a stream of its own (a unique prefix on a valid
// stream id, keeping its length), so inputs do not depend on each other; the
// database is one per fuzz process.
func FuzzAppend(f *testing.F) {
	cfg := &conduit.Config{MaxEventSize: conduit.MaxEventSizeDefault, MaxAppendSize: conduit.MaxAppendSizeDefault}
	appendSeeds(f, cfg)
	store, pool := newStore(f, cfg)
	h := &appendHarness{store: store, pool: pool}
	f.Fuzz(func(t *testing.T, stream, typ string, data, meta []byte, expected int64, shape uint8) {
		h.check(t, newAppendInput(cfg, stream, typ, data, meta, expected, shape&0x1f))
	})
}

func (h *appendHarness) check(t *testing.T, in appendInput) {
	ctx := t.Context()
	h.checkOracle(t, ctx, in.data)
	h.checkOracle(t, ctx, in.meta)
	h.n++
	in.stream = uniqueStreamID(in.stream, h.n)
	invalid := in.invalidFields()
	prior := int64(0)
	if validStreamID(in.stream) {
		for i := range in.prior {
			if _, err := h.store.Append(ctx, in.stream, conduit.Exactly(int64(i)), mustEvent(t, "prior", i)); err != nil {
				t.Fatalf("append prior event %d: %v", i, err)
			}
		}
		prior = int64(in.prior)
	}
	before := h.lastPosition(t, ctx)
	events := in.events(t)
	res, err := h.append(t, ctx, in, events)

	switch {
	case len(invalid) > 0:
		in.checkRefusal(t, err, invalid)
	case !expectationHolds(in.expected, prior):
		var vc *conduit.VersionConflictError
		if !errors.As(err, &vc) || !errors.Is(err, conduit.ErrVersionConflict) || !conduit.IsRefused(err) {
			t.Fatalf("append expecting %s to a stream at %d: %v, want a *VersionConflictError", in.expected, prior, err)
		}
		if vc.StreamID != in.stream || vc.Expected != in.expected || vc.Actual != prior {
			t.Fatalf("conflict %+v, want stream %q expected %s actual %d", vc, in.stream, in.expected, prior)
		}
	default:
		if err != nil {
			t.Fatalf("valid append refused: %v (refused %v, outcome unknown %v)", err, conduit.IsRefused(err), conduit.IsOutcomeUnknown(err))
		}
		h.checkStored(t, ctx, in, events, prior, res)
		return
	}
	// Refused: nothing written.
	if after := h.lastPosition(t, ctx); after != before {
		t.Fatalf("refused append moved the log from %s to %s", before, after)
	}
	if validStreamID(in.stream) {
		if v, err := h.store.StreamVersion(ctx, in.stream); err != nil || v != prior {
			t.Fatalf("stream version after a refusal: %d, %v; want %d", v, err, prior)
		}
	} else {
		checkStreamIDRefused(t, h.store, in.stream)
	}
}

// append appends in, with Append or (in.tx) with AppendTx in a transaction
// that it commits if the append succeeds, after checking that a refusal
// left it usable.
func (h *appendHarness) append(t *testing.T, ctx context.Context, in appendInput, events []conduit.EventData) (conduit.AppendResult, error) {
	if !in.tx {
		return h.store.Append(ctx, in.stream, in.expected, events...)
	}
	tx, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	res, err := h.store.AppendTx(ctx, tx, in.stream, in.expected, events...)
	if err != nil {
		if _, uerr := tx.Exec(ctx, "SELECT 1"); uerr != nil {
			t.Fatalf("AppendTx refused with %v and left the transaction unusable: %v", err, uerr)
		}
		return res, err
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	return res, nil
}

// checkStored fails unless the stream holds the appended events after its
// prior ones, as given.
func (h *appendHarness) checkStored(t *testing.T, ctx context.Context, in appendInput, events []conduit.EventData, prior int64, res conduit.AppendResult) {
	t.Helper()
	if res.Version != prior+int64(in.count) || res.Duplicate {
		t.Fatalf("append to a stream at %d of %d events: %+v", prior, in.count, res)
	}
	read := collect(t, h.store.ReadStream(ctx, in.stream, prior+1))
	if len(read) != in.count {
		t.Fatalf("read %d events back, appended %d", len(read), in.count)
	}
	for i, e := range read {
		switch {
		case e.StreamID != in.stream:
			t.Fatalf("event %d: stream id %q, appended to %q", i, e.StreamID, in.stream)
		case e.StreamVersion != prior+1+int64(i):
			t.Fatalf("event %d: version %d, want %d", i, e.StreamVersion, prior+1+int64(i))
		case e.ID != events[i].ID:
			t.Fatalf("event %d: id %s, appended %s", i, e.ID, events[i].ID)
		case e.Type != in.typ:
			t.Fatalf("event %d: type %q, appended %q", i, e.Type, in.typ)
		case !jsonEqual(e.Data, in.data):
			t.Fatalf("event %d: data %.200s, appended %.200s", i, e.Data, in.data)
		case len(in.meta) == 0 && e.Metadata != nil:
			t.Fatalf("event %d: metadata %.200s, appended none", i, e.Metadata)
		case len(in.meta) > 0 && !jsonEqual(e.Metadata, in.meta):
			t.Fatalf("event %d: metadata %.200q, appended %.200q", i, e.Metadata, in.meta)
		}
	}
	if last := read[len(read)-1]; last.Position != res.Position {
		t.Fatalf("last event at %s, append returned %s", last.Position, res.Position)
	}
}

// checkOracle fails unless jsonbRefusal and the server agree on b: both
// accept or both refuse, except that the oracle (like the library) refuses
// nesting deeper than encoding/json allows, which jsonb may store.
func (h *appendHarness) checkOracle(t *testing.T, ctx context.Context, b []byte) {
	t.Helper()
	if len(b) == 0 {
		return
	}
	reason := jsonbRefusal(b)
	serverErr := pgJSONBRefusal(t, ctx, h.pool, b)
	switch {
	case reason == "" && serverErr != nil:
		t.Fatalf("the server refuses %.200q (%v), the oracle accepts it", b, serverErr)
	case reason != "" && serverErr == nil && jsonDepth(b) <= jsonMaxDepth:
		t.Fatalf("the server accepts %.200q, the oracle refuses it: %s", b, reason)
	}
}

// lastPosition returns the log's last (transaction id, position), read on
// the primary key: any write moves it (the fuzz process appends alone).
func (h *appendHarness) lastPosition(t *testing.T, ctx context.Context) string {
	t.Helper()
	var last string
	err := h.pool.QueryRow(ctx, `SELECT COALESCE((SELECT transaction_id::text || '/' || global_position
		FROM conduit.events ORDER BY transaction_id DESC, global_position DESC LIMIT 1), 'none')`).Scan(&last)
	if err != nil {
		t.Fatalf("last position: %v", err)
	}
	return last
}

// uniqueStreamID returns a valid stream id made unique by a prefix for
// input n, at the same length when that is the limit (whole runes at the
// front give way to the prefix and ASCII padding); an invalid one as is.
func uniqueStreamID(id string, n int) string {
	if !validStreamID(id) {
		return id
	}
	tag := "fuzz" + strconv.Itoa(n) + ":"
	if len(tag)+len(id) <= conduit.MaxStreamIDLength {
		return tag + id
	}
	k := len(tag)
	for k < len(id) && !utf8.RuneStart(id[k]) {
		k++
	}
	return tag + strings.Repeat("-", k-len(tag)) + id[k:]
}

// checkStreamIDRefused fails unless the reads refuse the invalid stream id
// with a *ValidationError.
func checkStreamIDRefused(t *testing.T, store *conduit.Store, stream string) {
	t.Helper()
	_, err := store.StreamVersion(t.Context(), stream)
	var rerr error
	for _, err := range store.ReadStream(t.Context(), stream, 1) {
		rerr = err
		break
	}
	for _, err := range []error{err, rerr} {
		var ve *conduit.ValidationError
		if !errors.As(err, &ve) || ve.Field != "stream id" {
			t.Fatalf("read of invalid stream id %q: %v, want a *ValidationError", stream, err)
		}
	}
}

// FuzzProjectionName: names given to NewRouter, NewProjector and WaitFor,
// and ProjectorConfig.InstanceID, against PostgreSQL. NewProjector refuses
// a name or an instance id with a *ConfigError, or accepts them, and then
// CatchUp registers the projection under the name byte for byte, its status
// shows it, and WaitFor finds it. WaitFor on a Store without that Projector
// returns nil (a registered name) or ErrNotFound, never another error.
func FuzzProjectionName(f *testing.F) {
	for _, s := range [][2]string{
		{"orders", ""},
		{strings.Repeat("p", 10_000), strings.Repeat("i", 10_000)},
		{strings.Repeat("é", 2048), "instance-é"},
	} {
		f.Add(s[0], s[1])
	}
	store, pool := newStore(f, nil)
	f.Fuzz(func(t *testing.T, name, instance string) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		// A Store on which no Projector was made: WaitFor answers from the
		// database alone.
		other, err := conduit.NewStore(pool, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := other.WaitFor(ctx, name, conduit.Position{}); err != nil && !errors.Is(err, conduit.ErrNotFound) {
			t.Fatalf("WaitFor(%q) on a Store without its Projector: %v, want nil or ErrNotFound", name, err)
		}

		r := conduit.NewRouter(name)
		if r.Name() != name {
			t.Fatalf("router name %q, made as %q", r.Name(), name)
		}
		p, err := conduit.NewProjector(store, r, &conduit.ProjectorConfig{InstanceID: instance, PollOnly: true})
		if err != nil {
			var ce *conduit.ConfigError
			if !errors.As(err, &ce) || !errors.Is(err, conduit.ErrInvalidConfig) {
				t.Fatalf("NewProjector(%q, instance %q) refused with %v (%T), want a *ConfigError", name, instance, err, err)
			}
			return
		}
		if p.Name() != name || instance != "" && p.InstanceID() != instance {
			t.Fatalf("projector %q instance %q, made as %q instance %q", p.Name(), p.InstanceID(), name, instance)
		}
		if err := p.CatchUp(ctx); err != nil {
			t.Fatalf("CatchUp of projection %q, instance %q, accepted by NewProjector: %v", name, instance, err)
		}
		st, err := store.ProjectionStatus(ctx, name)
		if err != nil || st.Name != name {
			t.Fatalf("status of %q: %q, %v", name, st.Name, err)
		}
		for _, s := range []*conduit.Store{store, other} {
			if err := s.WaitFor(ctx, name, conduit.Position{}); err != nil {
				t.Fatalf("WaitFor(%q) after CatchUp: %v", name, err)
			}
		}
	})
}

// configInput is FuzzConfig's input, decoded.
type configInput struct {
	store   conduit.Config
	proj    conduit.ProjectorConfig
	entity  int
	invalid map[string]bool // fields out of their documented range
}

// newConfigInput applies the documented ranges, defaults first.
func newConfigInput(maxEvent, maxAppend, readPage, notify, batch, lease, poll, attempts, poison, backoff, stalled, entity, appendBatch int64, proj1, proj2 string) configInput {
	c := configInput{
		store: conduit.Config{MaxEventSize: int(maxEvent), MaxAppendSize: int(maxAppend), ReadPageSize: int(readPage),
			NotifyInterval: time.Duration(notify), MaxAppendBatch: int(appendBatch),
			Projections: []conduit.Projection{conduit.NewRouter(proj1), conduit.NewRouter(proj2)}},
		proj: conduit.ProjectorConfig{BatchSize: int(batch), LeaseDuration: time.Duration(lease), PollInterval: time.Duration(poll),
			MaxAttempts: int(attempts), Poison: conduit.PoisonPolicy(poison), RetryBackoff: time.Duration(backoff),
			StalledRetryInterval: time.Duration(stalled)},
		entity: int(entity),
	}
	or := func(v, def int64) int64 {
		if v == 0 {
			return def
		}
		return v
	}
	out := func(v, lo, hi int64) bool { return v < lo || v > hi }
	ms := int64(time.Millisecond)
	eventSize := or(maxEvent, conduit.MaxEventSizeDefault)
	c.invalid = map[string]bool{
		"Config.MaxEventSize":                  out(eventSize, 1, conduit.MaxEventSizeLimit),
		"Config.MaxAppendSize":                 out(or(maxAppend, max(conduit.MaxAppendSizeDefault, eventSize)), eventSize, conduit.MaxAppendSizeLimit),
		"Config.ReadPageSize":                  out(or(readPage, conduit.ReadPageSizeDefault), 1, conduit.ReadPageSizeLimit),
		"Config.NotifyInterval":                out(or(notify, int64(conduit.NotifyIntervalDefault)), 1, int64(conduit.NotifyIntervalLimit)),
		"Config.MaxAppendBatch":                out(or(appendBatch, conduit.MaxAppendBatchDefault), 1, conduit.MaxAppendBatchLimit),
		"Config.Projections[0]":                proj1 == "",
		"Config.Projections[1]":                proj2 == "" || proj1 == proj2,
		"ProjectorConfig.BatchSize":            out(or(batch, conduit.BatchSizeDefault), 1, conduit.BatchSizeLimit),
		"ProjectorConfig.LeaseDuration":        out(or(lease, int64(conduit.LeaseDurationDefault)), 100*ms, int64(conduit.LeaseDurationLimit)),
		"ProjectorConfig.PollInterval":         out(or(poll, int64(conduit.PollIntervalDefault)), ms, int64(conduit.PollIntervalLimit)),
		"ProjectorConfig.MaxAttempts":          out(or(attempts, conduit.MaxAttemptsDefault), 1, conduit.MaxAttemptsLimit),
		"ProjectorConfig.Poison":               poison != int64(conduit.PoisonStop) && poison != int64(conduit.PoisonPark),
		"ProjectorConfig.RetryBackoff":         out(or(backoff, int64(conduit.RetryBackoffDefault)), ms, int64(conduit.RetryBackoffLimit)),
		"ProjectorConfig.StalledRetryInterval": out(or(stalled, int64(conduit.StalledRetryIntervalDefault)), ms, int64(conduit.StalledRetryIntervalLimit)),
		"Entity.MaxAttempts":                   out(or(entity, conduit.EntityMaxAttemptsDefault), 1, conduit.EntityMaxAttemptsLimit),
	}
	return c
}

// invalidWithPrefix returns the invalid fields whose names start with prefix.
func (c configInput) invalidWithPrefix(prefix string) map[string]bool {
	out := map[string]bool{}
	for field, bad := range c.invalid {
		if bad && strings.HasPrefix(field, prefix) {
			out[field] = true
		}
	}
	return out
}

// checkConfigVerdict fails unless err is nil for valid fields, or a
// *ConfigError naming one of the invalid ones.
func checkConfigVerdict(t *testing.T, what string, err error, invalid map[string]bool) {
	t.Helper()
	if len(invalid) == 0 {
		if err != nil {
			t.Fatalf("%s refused valid configuration: %v", what, err)
		}
		return
	}
	var ce *conduit.ConfigError
	if !errors.As(err, &ce) || !errors.Is(err, conduit.ErrInvalidConfig) || !invalid[ce.Field] {
		t.Fatalf("%s: %v (%T), want a *ConfigError naming one of %v", what, err, err, invalid)
	}
	if !strings.Contains(err.Error(), ce.Field) {
		t.Fatalf("%s: the message %q does not name the field %s", what, err, ce.Field)
	}
}

// FuzzConfig: Config (NewStore), ProjectorConfig (NewProjector) and
// Entity.MaxAttempts (Entity.UpdateTx) against their documented ranges,
// without a server: a field out of range is refused with a *ConfigError
// naming it, and values in range are accepted.
func FuzzConfig(f *testing.F) {
	for _, s := range [][13]int64{
		{},
		{1, 1, 1, 1, 1, int64(100 * time.Millisecond), int64(time.Millisecond), 1, 1, int64(time.Millisecond), int64(time.Millisecond), 1, 1},
		{conduit.MaxEventSizeLimit, conduit.MaxAppendSizeLimit, conduit.ReadPageSizeLimit, int64(conduit.NotifyIntervalLimit),
			conduit.BatchSizeLimit, int64(conduit.LeaseDurationLimit), int64(conduit.PollIntervalLimit), conduit.MaxAttemptsLimit, 0,
			int64(conduit.RetryBackoffLimit), int64(conduit.StalledRetryIntervalLimit), conduit.EntityMaxAttemptsLimit,
			conduit.MaxAppendBatchLimit},
		{conduit.MaxEventSizeLimit + 1, conduit.MaxAppendSizeLimit + 1, conduit.ReadPageSizeLimit + 1, int64(conduit.NotifyIntervalLimit) + 1,
			conduit.BatchSizeLimit + 1, int64(conduit.LeaseDurationLimit) + 1, int64(conduit.PollIntervalLimit) + 1, conduit.MaxAttemptsLimit + 1, 2,
			int64(conduit.RetryBackoffLimit) + 1, int64(conduit.StalledRetryIntervalLimit) + 1, conduit.EntityMaxAttemptsLimit + 1,
			conduit.MaxAppendBatchLimit + 1},
		{-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1},
		{math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64, math.MinInt64},
		{math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64},
		{32 << 20},            // MaxEventSize above the default MaxAppendSize: that follows it
		{100, 99},             // MaxAppendSize below MaxEventSize
		{0, 1 << 20},          // MaxAppendSize at the default MaxEventSize
		{0, 1<<20 - 1},        // just below it
		{0, 0, 0, 0, 0, 99e6}, // LeaseDuration under 100ms
		{0, 0, 0, 0, 0, 0, 999_999},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10], s[11], s[12], "p1", "p2")
	}
	f.Add(int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), "same", "same")
	f.Add(int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), int64(0), "", "p")

	pool := offlinePool(f)
	defaultStore, err := conduit.NewStore(pool, nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, maxEvent, maxAppend, readPage, notify, batch, lease, poll, attempts, poison, backoff, stalled, entity, appendBatch int64, proj1, proj2 string) {
		c := newConfigInput(maxEvent, maxAppend, readPage, notify, batch, lease, poll, attempts, poison, backoff, stalled, entity, appendBatch, proj1, proj2)
		store, err := conduit.NewStore(pool, &c.store)
		checkConfigVerdict(t, "NewStore", err, c.invalidWithPrefix("Config."))
		if store == nil {
			store = defaultStore
		}
		_, err = conduit.NewProjector(store, conduit.NewRouter("p"), &c.proj)
		checkConfigVerdict(t, "NewProjector", err, c.invalidWithPrefix("ProjectorConfig."))

		accounts := conduit.Entity[int]{Evolve: func(n int, _ conduit.Event) (int, error) { return n + 1, nil }, MaxAttempts: c.entity}
		tx := &stubTx{}
		_, err = accounts.UpdateTx(t.Context(), store, tx, "account", func(int) ([]conduit.EventData, error) {
			return []conduit.EventData{{Type: "t", Data: json.RawMessage(`{}`)}}, nil
		})
		if invalid := c.invalidWithPrefix("Entity."); len(invalid) == 0 {
			if !errors.Is(err, errReachedDatabase) {
				t.Fatalf("Entity.UpdateTx with MaxAttempts %d: %v, want it to load the stream", c.entity, err)
			}
		} else {
			checkConfigVerdict(t, "Entity.UpdateTx", err, invalid)
			if len(tx.queries) != 0 {
				t.Fatalf("Entity.UpdateTx with MaxAttempts %d sent a query", c.entity)
			}
		}
	})
}
