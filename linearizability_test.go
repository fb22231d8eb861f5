package conduit_test

// Linearizability of appends and reads under faults, checked with porcupine
// against a sequential model of a set of streams.
//
// Writers append to a few shared streams with Exactly(n) (n from a
// StreamVersion they read just before), Any, StreamExists and NoStream (also
// to fresh streams they race to create), and read them with StreamVersion and
// ReadStream, while their backends are terminated at random
// (pg_terminate_backend) and a proxy between them and the server drops
// answers and cuts the connection (a lost acknowledgement: the append may
// have committed). Every call is recorded with its invocation and response
// times and its result. The history must be linearizable: there is
// one order of all the calls, each placed between its invocation and its
// response, in which each result is what the model gives.
//
// The model's state is, per stream, the list of its event ids. An append
// follows the library's one rule: if its first event id is stored, at a
// version where its expectation held, followed by its other ids, it is an
// idempotent retry and reports a duplicate with the version of its last event;
// another stored id is an event id conflict; an expectation that does not
// hold is a version conflict carrying the stream's version; otherwise its ids
// go at the end of the stream.
//
// An append whose outcome is unknown (IsOutcomeUnknown: the connection died
// around it) may or may not have happened: it is recorded with a response
// time after every other call's, and any result is accepted for it, so the
// checker may place it anywhere after its invocation, including after
// everything else, where its effect is seen by no one. The writer then sends
// the same events again, with the same expectation, until the outcome is
// known; the model answers a resend whose events were stored with a duplicate.
// (linHistory.finish shrinks the checker's search without changing its
// verdict.)
//
// The load runs for CONDUIT_LINEARIZABILITY_SECONDS seconds (default 3).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/pgtest"
)

type linKind int8

const (
	linAppend  linKind = iota
	linVersion         // StreamVersion
	linRead            // ReadStream from version 1
)

type linStatus int8

const (
	linOK linStatus = iota
	linDuplicate
	linConflict   // *VersionConflictError
	linIDConflict // *DuplicateEventIDError
	linUnknown    // IsOutcomeUnknown: may or may not have happened
)

// linInput is a call. ids are the appended events' ids, 16 bytes each.
type linInput struct {
	kind     linKind
	stream   string
	expected conduit.ExpectedVersion
	ids      string
	// An append's name: writer and number (the same for its resends), and
	// which send of its events it is (1: the first).
	appendName string
	attempt    int
}

// linOutput is a call's result. version is an append's resulting version
// (linOK, linDuplicate), the actual version of a conflict, or what
// StreamVersion returned; ids what ReadStream returned.
type linOutput struct {
	status  linStatus
	version int64
	ids     string
	err     string
}

// linApply is the model's append: its result and the stream's next state.
func linApply(stream string, in linInput) (linOutput, string) {
	n := len(in.ids) / 16
	for k := range n {
		at := linIndex(stream, in.ids[16*k:16*k+16])
		if at < 0 {
			continue
		}
		// The first stored id decides, as in conduit.explain_append.
		if k == 0 && expectationHolds(in.expected, int64(at)) && strings.HasPrefix(stream[16*at:], in.ids) {
			return linOutput{status: linDuplicate, version: int64(at + n)}, stream
		}
		return linOutput{status: linIDConflict}, stream
	}
	version := int64(len(stream) / 16)
	if !expectationHolds(in.expected, version) {
		return linOutput{status: linConflict, version: version}, stream
	}
	return linOutput{status: linOK, version: version + int64(n)}, stream + in.ids
}

// linIndex returns the index of id in the stream, or -1.
func linIndex(stream, id string) int {
	for i := 0; i+16 <= len(stream); i += 16 {
		if stream[i:i+16] == id {
			return i / 16
		}
	}
	return -1
}

// linModel is the sequential specification, partitioned by stream: the state
// of a partition is its stream's ids. labels names event ids for the
// visualization.
func linModel(labels map[string]string) porcupine.Model {
	describeIDs := func(ids string) string {
		var names []string
		for i := 0; i+16 <= len(ids); i += 16 {
			names = append(names, labels[ids[i:i+16]])
		}
		if len(names) > 6 {
			names = append([]string{"…"}, names[len(names)-6:]...)
		}
		return strings.Join(names, " ")
	}
	return porcupine.Model{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byStream := map[string][]porcupine.Operation{}
			for _, op := range history {
				s := op.Input.(linInput).stream
				byStream[s] = append(byStream[s], op)
			}
			return slices.Collect(maps.Values(byStream))
		},
		Init: func() any { return "" },
		Step: func(state, input, output any) (bool, any) {
			stream, in, out := state.(string), input.(linInput), output.(linOutput)
			switch in.kind {
			case linVersion:
				return out.version == int64(len(stream)/16), stream
			case linRead:
				return out.ids == stream, stream
			}
			want, next := linApply(stream, in)
			if out.status == linUnknown {
				return true, next
			}
			return out.status == want.status && (out.status == linIDConflict || out.version == want.version), next
		},
		Equal: func(a, b any) bool { return a.(string) == b.(string) },
		DescribeOperation: func(input, output any) string {
			in, out := input.(linInput), output.(linOutput)
			var call string
			switch in.kind {
			case linVersion:
				return fmt.Sprintf("StreamVersion(%s) → %d", in.stream, out.version)
			case linRead:
				return fmt.Sprintf("ReadStream(%s) → v%d [%s]", in.stream, len(out.ids)/16, describeIDs(out.ids))
			}
			call = fmt.Sprintf("%s#%d: Append(%s, %s, %s)", in.appendName, in.attempt, in.stream, in.expected, describeIDs(in.ids))
			switch out.status {
			case linOK:
				return fmt.Sprintf("%s → v%d", call, out.version)
			case linDuplicate:
				return fmt.Sprintf("%s → duplicate v%d", call, out.version)
			case linConflict:
				return fmt.Sprintf("%s → conflict, actual %d", call, out.version)
			case linIDConflict:
				return call + " → event id used elsewhere"
			}
			return fmt.Sprintf("%s → unknown (%s)", call, out.err)
		},
		DescribeState: func(state any) string {
			return fmt.Sprintf("v%d [%s]", len(state.(string))/16, describeIDs(state.(string)))
		},
	}
}

// linHistory records calls from many goroutines.
type linHistory struct {
	start  time.Time
	mu     sync.Mutex
	ops    []porcupine.Operation
	labels map[string]string // event id -> name
}

func (h *linHistory) now() int64 { return time.Since(h.start).Nanoseconds() }

func (h *linHistory) add(client int, in linInput, out linOutput, call, ret int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
}

// finish returns the history for the checker. A send whose outcome is
// unknown gets a response time after every other call's: it may take effect
// at any time after its invocation, or never. Two reductions then keep the
// checker's search small without changing its verdict:
//
//   - A send none of whose events is in the final streams (stored, read
//     after every other call ended) never took effect: it is left out, as
//     if placed after everything, where any result is accepted for it.
//   - When a later send of the same events stored them (ok) or found them
//     stored (a duplicate), the send's response time becomes that one's: its
//     events were stored once, before, and placed any later it would be a
//     duplicate, which changes nothing.
//
// What is left after everything are sends whose events are stored but whose
// last resend was refused or unknown too: few. It also returns how many
// sends it left out and how many it bounded.
func (h *linHistory) finish(stored map[string]bool) (ops []porcupine.Operation, dropped, bounded int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	end := int64(0)
	last := map[string]porcupine.Operation{} // an append's last send
	for _, op := range h.ops {
		end = max(end, op.Return)
		if in := op.Input.(linInput); in.kind == linAppend {
			if prev, ok := last[in.appendName]; !ok || prev.Input.(linInput).attempt < in.attempt {
				last[in.appendName] = op
			}
		}
	}
	for _, op := range h.ops {
		in := op.Input.(linInput)
		if op.Output.(linOutput).status != linUnknown {
			ops = append(ops, op)
			continue
		}
		anyStored := false
		for i := 0; i+16 <= len(in.ids); i += 16 {
			anyStored = anyStored || stored[in.ids[i:i+16]]
		}
		if !anyStored {
			dropped++
			continue
		}
		op.Return = end + 1
		final := last[in.appendName]
		if s := final.Output.(linOutput).status; s == linOK || s == linDuplicate {
			op.Return = final.Return
			bounded++
		}
		ops = append(ops, op)
	}
	return ops, dropped, bounded
}

// linWriter is one client of the test.
type linWriter struct {
	t       *testing.T
	id      int
	store   *conduit.Store
	h       *linHistory
	rng     *rand.Rand
	streams []string
	fresh   *atomic.Int64 // the generation of the fresh stream to race on
	appends int
	stats   *linStats
}

type linStats struct {
	appends, unknown, resends, duplicates, conflicts, reads, failedReads atomic.Int64
}

// run makes calls until the deadline. Calls in flight then finish (and
// resends go on until their outcome is known): the run's end cancels
// nothing, so the only unknown outcomes are the faults'.
func (w *linWriter) run(ctx context.Context, deadline time.Time) {
	for time.Now().Before(deadline) {
		stream := w.streams[w.rng.IntN(len(w.streams))]
		switch r := w.rng.IntN(100); {
		case r < 10:
			w.version(ctx, stream)
		case r < 20:
			w.read(ctx, stream)
		case r < 50:
			if v, ok := w.version(ctx, stream); ok {
				w.append(ctx, stream, conduit.Exactly(v))
			}
		case r < 70:
			w.append(ctx, stream, conduit.Any)
		case r < 80:
			w.append(ctx, stream, conduit.StreamExists)
		case r < 88:
			w.append(ctx, stream, conduit.NoStream) // a conflict, once the stream exists
		default:
			// Race the other writers to create a fresh stream; once it
			// exists (a known outcome), the next one is fresh.
			gen := w.fresh.Load()
			if _, known := w.append(ctx, "fresh-"+strconv.FormatInt(gen, 10), conduit.NoStream); known {
				w.fresh.CompareAndSwap(gen, gen+1)
			}
		}
	}
}

// version calls StreamVersion and records it. A failed call is left out of
// the history: it observed nothing and changed nothing.
func (w *linWriter) version(ctx context.Context, stream string) (int64, bool) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	call := w.h.now()
	v, err := w.store.StreamVersion(cctx, stream)
	ret := w.h.now()
	if err != nil {
		w.checkReadError(ctx, err)
		return 0, false
	}
	w.stats.reads.Add(1)
	w.h.add(w.id, linInput{kind: linVersion, stream: stream}, linOutput{version: v}, call, ret)
	return v, true
}

// read calls ReadStream and records it.
func (w *linWriter) read(ctx context.Context, stream string) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var ids strings.Builder
	call := w.h.now()
	var err error
	version := int64(0)
	for e, rerr := range w.store.ReadStream(cctx, stream, 1) {
		if err = rerr; err != nil {
			break
		}
		if version++; e.StreamVersion != version || e.StreamID != stream {
			w.t.Errorf("ReadStream(%s) gave %s at version %d of stream %q", stream, e.ID, e.StreamVersion, e.StreamID)
		}
		ids.Write(e.ID[:])
	}
	ret := w.h.now()
	if err != nil {
		w.checkReadError(ctx, err)
		return
	}
	w.stats.reads.Add(1)
	w.h.add(w.id, linInput{kind: linRead, stream: stream}, linOutput{ids: ids.String()}, call, ret)
}

func (w *linWriter) checkReadError(ctx context.Context, err error) {
	w.stats.failedReads.Add(1)
	if !conduit.IsOutcomeUnknown(err) && ctx.Err() == nil {
		w.t.Errorf("writer %d: read failed with an error that is not transient: %v", w.id, err)
	}
}

// append appends one to three new events, and sends the same events again
// while the outcome is unknown. It returns the last known outcome.
func (w *linWriter) append(ctx context.Context, stream string, expected conduit.ExpectedVersion) (linStatus, bool) {
	w.appends++
	events := make([]conduit.EventData, 1+w.rng.IntN(3))
	var ids strings.Builder
	for i := range events {
		events[i] = mustEvent(w.t, "lin", map[string]int{"writer": w.id, "append": w.appends, "event": i})
		ids.Write(events[i].ID[:])
		w.h.mu.Lock()
		w.h.labels[string(events[i].ID[:])] = fmt.Sprintf("w%d.%d.%d", w.id, w.appends, i)
		w.h.mu.Unlock()
	}
	w.stats.appends.Add(1)
	for attempt := 1; ; attempt++ {
		in := linInput{kind: linAppend, stream: stream, expected: expected, ids: ids.String(),
			appendName: fmt.Sprintf("w%d.%d", w.id, w.appends), attempt: attempt}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		call := w.h.now()
		res, err := w.store.Append(cctx, stream, expected, events...)
		ret := w.h.now()
		cancel()
		var (
			out linOutput
			vc  *conduit.VersionConflictError
		)
		switch {
		case err == nil && res.Duplicate:
			out = linOutput{status: linDuplicate, version: res.Version}
			w.stats.duplicates.Add(1)
		case err == nil:
			out = linOutput{status: linOK, version: res.Version}
		case errors.As(err, &vc):
			out = linOutput{status: linConflict, version: vc.Actual}
			w.stats.conflicts.Add(1)
		case errors.Is(err, conduit.ErrDuplicateEventID):
			out = linOutput{status: linIDConflict, err: err.Error()}
		default:
			if !conduit.IsOutcomeUnknown(err) {
				w.t.Errorf("writer %d: append failed with an error that is neither a refusal nor an unknown outcome: %v", w.id, err)
			}
			out = linOutput{status: linUnknown, err: err.Error()}
			w.stats.unknown.Add(1)
		}
		w.h.add(w.id, in, out, call, ret)
		if out.status != linUnknown {
			return out.status, true
		}
		if attempt >= 100 {
			w.t.Errorf("writer %d: append %s: outcome still unknown after %d sends: %s", w.id, in.appendName, attempt, out.err)
			return linUnknown, false
		}
		w.stats.resends.Add(1)
	}
}

// killBackends terminates a random backend of the writers' pool every
// every to 5×every, preferring one running a statement, until ctx ends.
func killBackends(ctx context.Context, t *testing.T, admin *pgxpool.Pool, app string, every time.Duration, kills *atomic.Int64) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every + time.Duration(rng.Int64N(int64(4*every)))):
		}
		var n int
		err := admin.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM (
			SELECT pid FROM pg_stat_activity
			 WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()
			 ORDER BY (state = 'active' AND $2) DESC, random() LIMIT 1) AS victim`, app, rng.IntN(3) > 0).Scan(&n)
		if err != nil {
			if ctx.Err() == nil {
				t.Errorf("terminate a backend: %v", err)
			}
			return
		}
		kills.Add(int64(n))
	}
}

// TestAppendLinearizable records a history under load and faults and checks
// it with porcupine (see the comment at the top of this file).
func TestAppendLinearizable(t *testing.T) {
	t.Parallel()
	forBatching(t, testAppendLinearizable)
}

func testAppendLinearizable(t *testing.T, cfg *conduit.Config) {
	seconds := 3.0
	if s := os.Getenv("CONDUIT_LINEARIZABILITY_SECONDS"); s != "" {
		var err error
		if seconds, err = strconv.ParseFloat(s, 64); err != nil || seconds <= 0 {
			t.Fatalf("CONDUIT_LINEARIZABILITY_SECONDS=%q: want a positive number of seconds", s)
		}
	}
	const writers = 8
	const app = "conduit-linearizability"
	name := pgtest.NewDB(t, conduit.Migrations(), conduit.Migrate)
	url := pgtest.URLFor(t, name)
	admin := pgtest.Connect(t, url)
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = writers + 2
	pcfg.ConnConfig.RuntimeParams["application_name"] = app
	// The writers reach the server through a proxy that loses answers.
	proxy := startLossyProxy(t, pcfg.ConnConfig.Host, pcfg.ConnConfig.Port)
	pcfg.ConnConfig.Host, pcfg.ConnConfig.Port = "127.0.0.1", proxy.port
	pcfg.ConnConfig.Fallbacks = nil
	pool, err := pgxpool.NewWithConfig(t.Context(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := conduit.NewStore(pool, &conduit.Config{DisableNotify: true, DisableAppendBatching: cfg.DisableAppendBatching})
	if err != nil {
		t.Fatal(err)
	}

	h := &linHistory{start: time.Now(), labels: map[string]string{}}
	stats := &linStats{}
	var kills atomic.Int64
	fresh := &atomic.Int64{}
	streams := []string{"lin-a", "lin-b", "lin-c"}

	// Rounds of load under faults, until the faults have hit every way they
	// can (a backend terminated, an answer lost, an outcome unknown, a resend
	// that found its events stored), at most maxRounds: how often each comes
	// up depends on the machine's speed, which a fixed duration does not.
	enough := func() bool {
		return kills.Load() > 0 && proxy.cuts.Load() > 0 && stats.unknown.Load() > 0 && stats.duplicates.Load() > 0
	}
	const maxRounds = 5
	// A backend every 10 to 50ms. Batched, one backend runs the appends of
	// up to all eight writers, and the terminations prefer a backend running
	// a statement: the same rate would fail nearly every batch, leaving a
	// history of little but unknown outcomes, which the checker cannot
	// search in its time. A quarter of the rate keeps about as many appends
	// hit per second.
	killEvery := 10 * time.Millisecond
	if !cfg.DisableAppendBatching {
		killEvery = 40 * time.Millisecond
	}
	ws := make([]*linWriter, writers) // the same writers each round: their appends' names go on
	for i := range ws {
		ws[i] = &linWriter{t: t, id: i, store: store, h: h, rng: rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))),
			streams: streams, fresh: fresh, stats: stats}
	}
	rounds := 0
	for rounds < maxRounds && (rounds == 0 || !enough()) {
		rounds++
		deadline := time.Now().Add(time.Duration(seconds * float64(time.Second)))
		faults, stopFaults := context.WithDeadline(t.Context(), deadline)
		var wg sync.WaitGroup
		wg.Go(func() {
			killBackends(faults, t, admin, app, killEvery, &kills)
		})
		for _, w := range ws {
			wg.Go(func() { w.run(t.Context(), deadline) })
		}
		wg.Wait()
		stopFaults()
	}
	proxy.lossy.Store(false)

	// Final reads, with no faults, of every stream written.
	final := map[string][]uuid.UUID{}
	stored := map[string]bool{}
	w := &linWriter{t: t, id: writers, store: store, h: h, stats: stats}
	touched := map[string]bool{}
	for _, op := range h.ops {
		touched[op.Input.(linInput).stream] = true
	}
	for stream := range touched {
		w.read(t.Context(), stream)
		w.version(t.Context(), stream)
		for e, err := range store.ReadStream(t.Context(), stream, 1) {
			if err != nil {
				t.Fatal(err)
			}
			final[stream] = append(final[stream], e.ID)
			stored[string(e.ID[:])] = true
		}
	}
	checkNoEventTwice(t, final)

	ops, dropped, bounded := h.finish(stored)
	t.Logf("%d × %.1fs of load: %d calls (%d appends, %d sends with an unknown outcome, %d resends, %d duplicates, %d conflicts; "+
		"%d reads, %d failed); %d backends terminated, %d answers lost; %d streams",
		rounds, seconds, len(h.ops), stats.appends.Load(), stats.unknown.Load(), stats.resends.Load(), stats.duplicates.Load(),
		stats.conflicts.Load(), stats.reads.Load(), stats.failedReads.Load(), kills.Load(), proxy.cuts.Load(), len(touched))
	t.Logf("unknown outcomes: %d never took effect (left out), %d bounded by a resend, %d open to the end",
		dropped, bounded, stats.unknown.Load()-int64(dropped+bounded))
	if !enough() {
		t.Errorf("the faults hit too little to prove much: %d backends terminated, %d answers lost, "+
			"%d unknown outcomes, %d resends found their events stored",
			kills.Load(), proxy.cuts.Load(), stats.unknown.Load(), stats.duplicates.Load())
	}
	checkLinearizable(t, linModel(h.labels), ops)
}

// checkLinearizable fails the test unless porcupine finds the history
// linearizable; then it writes porcupine's visualization to a temporary
// file and logs its path.
func checkLinearizable(t *testing.T, model porcupine.Model, ops []porcupine.Operation) {
	t.Helper()
	start := time.Now()
	result, info := porcupine.CheckOperationsVerbose(model, ops, 5*time.Minute)
	t.Logf("porcupine: %s in %s", result, time.Since(start).Round(time.Millisecond))
	if result == porcupine.Ok {
		return
	}
	f, err := os.CreateTemp("", "conduit-linearizability-*.html")
	if err == nil {
		err = porcupine.Visualize(model, info, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Errorf("write the visualization: %v", err)
	} else {
		t.Logf("visualization: %s", f.Name())
	}
	t.Fatalf("the history of %d calls is not linearizable (porcupine: %s)", len(ops), result)
}

// checkNoEventTwice fails if an event id is stored twice, in one stream or
// two: a resend wrote again.
func checkNoEventTwice(t *testing.T, streams map[string][]uuid.UUID) {
	t.Helper()
	seen := map[uuid.UUID]string{}
	for stream, ids := range streams {
		for i, id := range ids {
			if prev, dup := seen[id]; dup {
				t.Errorf("event %s stored twice: %s and %s v%d", id, prev, stream, i+1)
			}
			seen[id] = fmt.Sprintf("%s v%d", stream, i+1)
		}
	}
}

// lossyProxy forwards TCP connections to the server. While lossy, it drops
// about one answer in 50 from the server and cuts that connection: the
// client never learns the outcome of a statement the server has finished,
// and perhaps committed (a lost acknowledgement).
type lossyProxy struct {
	port  uint16
	lossy atomic.Bool
	cuts  atomic.Int64
}

func startLossyProxy(t *testing.T, host string, port uint16) *lossyProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &lossyProxy{port: uint16(ln.Addr().(*net.TCPAddr).Port)}
	p.lossy.Store(true)
	target := net.JoinHostPort(host, strconv.Itoa(int(port)))
	if strings.HasPrefix(host, "/") { // a unix socket directory
		target = fmt.Sprintf("%s/.s.PGSQL.%d", host, port)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return // closed at cleanup
			}
			network := "tcp"
			if strings.HasPrefix(target, "/") {
				network = "unix"
			}
			server, err := net.Dial(network, target)
			if err != nil {
				client.Close()
				continue
			}
			wg.Go(func() { p.forward(client, server) })
		}
	})
	return p
}

// forward copies client to server and server to client, until either side
// closes or an answer is dropped.
func (p *lossyProxy) forward(client, server net.Conn) {
	up := make(chan struct{})
	go func() {
		defer close(up)
		_, _ = io.Copy(server, client)
		server.Close()
	}()
	defer func() {
		client.Close()
		server.Close()
		<-up
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 && p.lossy.Load() && rand.IntN(50) == 0 {
			p.cuts.Add(1)
			return
		}
		if n > 0 {
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// The model and the checker reject what they must: each history here is
// checked against its expected verdict, so a model that accepts everything
// fails this test.
func TestLinearizabilityModel(t *testing.T) {
	t.Parallel()
	a, b := strings.Repeat("a", 16), strings.Repeat("b", 16)
	appendOp := func(client int, expected conduit.ExpectedVersion, ids, name string, attempt int, out linOutput, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Call: call, Return: ret, Output: out,
			Input: linInput{kind: linAppend, stream: "s", expected: expected, ids: ids, appendName: name, attempt: attempt}}
	}
	read := func(client int, ids string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Call: call, Return: ret, Output: linOutput{ids: ids},
			Input: linInput{kind: linRead, stream: "s"}}
	}
	version := func(client int, v int64, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Call: call, Return: ret, Output: linOutput{version: v},
			Input: linInput{kind: linVersion, stream: "s"}}
	}
	ok := func(v int64) linOutput { return linOutput{status: linOK, version: v} }
	unknown := linOutput{status: linUnknown}
	const never = 1000 // after everything: an unknown outcome

	for _, c := range []struct {
		name string
		ops  []porcupine.Operation
		want bool
	}{
		{"appends in turn", []porcupine.Operation{
			appendOp(0, conduit.NoStream, a, "a", 1, ok(1), 0, 1),
			appendOp(1, conduit.Exactly(1), b, "b", 1, ok(2), 2, 3),
			read(0, a+b, 4, 5), version(1, 2, 4, 5)}, true},
		{"two winners of one version", []porcupine.Operation{
			appendOp(0, conduit.Exactly(0), a, "a", 1, ok(1), 0, 1),
			appendOp(1, conduit.Exactly(0), b, "b", 1, ok(1), 2, 3)}, false},
		{"concurrent appends, either order", []porcupine.Operation{
			appendOp(0, conduit.Any, a, "a", 1, ok(2), 0, 5),
			appendOp(1, conduit.Any, b, "b", 1, ok(1), 1, 4),
			read(2, b+a, 6, 7)}, true},
		{"a read misses an acknowledged append", []porcupine.Operation{
			appendOp(0, conduit.Any, a, "a", 1, ok(1), 0, 1),
			read(1, "", 2, 3)}, false},
		{"a conflict with the wrong actual version", []porcupine.Operation{
			appendOp(0, conduit.Any, a, "a", 1, ok(1), 0, 1),
			appendOp(1, conduit.NoStream, b, "b", 1, linOutput{status: linConflict, version: 0}, 2, 3)}, false},
		{"an unknown outcome that happened", []porcupine.Operation{
			appendOp(0, conduit.Any, a, "a", 1, unknown, 0, never),
			read(1, a, 2, 3)}, true},
		{"an unknown outcome that did not happen", []porcupine.Operation{
			appendOp(0, conduit.NoStream, a, "a", 1, unknown, 0, never),
			appendOp(1, conduit.NoStream, b, "b", 1, ok(1), 2, 3),
			read(1, b, 4, 5)}, true},
		{"a resend finds its events stored", []porcupine.Operation{
			appendOp(0, conduit.Exactly(0), a+b, "ab", 1, unknown, 0, 3),
			appendOp(0, conduit.Exactly(0), a+b, "ab", 2, linOutput{status: linDuplicate, version: 2}, 2, 3),
			read(1, a+b, 4, 5)}, true},
		{"a duplicate of events never stored", []porcupine.Operation{
			appendOp(0, conduit.Exactly(0), a, "a", 2, linOutput{status: linDuplicate, version: 1}, 0, 1)}, false},
		{"a resend stores its events again", []porcupine.Operation{
			appendOp(0, conduit.Any, a, "a", 1, unknown, 0, never),
			read(1, a, 1, 2),
			appendOp(0, conduit.Any, a, "a", 2, ok(2), 3, 4)}, false},
		{"an event appears twice in a read", []porcupine.Operation{
			appendOp(0, conduit.Any, a, "a", 1, unknown, 0, never),
			read(1, a+a, 1, 2)}, false},
	} {
		if got := porcupine.CheckOperations(linModel(map[string]string{}), c.ops); got != c.want {
			t.Errorf("%s: linearizable = %v, want %v", c.name, got, c.want)
		}
	}
}

// finish leaves out the sends that never took effect, bounds those a resend
// settled, and leaves the others open to the end.
func TestLinearizabilityHistoryReductions(t *testing.T) {
	t.Parallel()
	a, b, c := strings.Repeat("a", 16), strings.Repeat("b", 16), strings.Repeat("c", 16)
	h := &linHistory{}
	send := func(name, ids string, attempt int, out linOutput, call, ret int64) {
		h.add(0, linInput{kind: linAppend, stream: "s", expected: conduit.Any, ids: ids, appendName: name, attempt: attempt},
			out, call, ret)
	}
	unknown := linOutput{status: linUnknown}
	send("a", a, 1, unknown, 0, 1) // stored by this send: bounded by the resend
	send("a", a, 2, linOutput{status: linDuplicate, version: 1}, 2, 3)
	send("b", b, 1, unknown, 4, 5) // never stored: left out
	send("b", b, 2, linOutput{status: linConflict, version: 1}, 6, 7)
	send("c", c, 1, unknown, 8, 9) // stored, though the resend was refused: open
	send("c", c, 2, linOutput{status: linConflict, version: 1}, 10, 11)
	ops, dropped, bounded := h.finish(map[string]bool{a: true, c: true})
	if dropped != 1 || bounded != 1 || len(ops) != 5 {
		t.Fatalf("dropped %d, bounded %d, %d calls left; want 1, 1, 5", dropped, bounded, len(ops))
	}
	returns := map[string]int64{}
	for _, op := range ops {
		if op.Output.(linOutput).status == linUnknown {
			returns[op.Input.(linInput).appendName] = op.Return
		}
	}
	if returns["a"] != 3 || returns["c"] != 12 {
		t.Fatalf("unknown outcomes end at %v, want a at 3 (its resend's end), c at 12 (after everything)", returns)
	}
}
