//go:build unix

package conduitnats_test

// Integration tests of the outbox relay with the NATS publisher: real
// PostgreSQL (conduittest's fresh databases), real NATS JetStream (the
// shared server, or a private one the test stops and starts), and relays
// in processes of their own, which the tests kill (SIGKILL) or pause
// (SIGSTOP, SIGCONT). A relay process is this test binary run again with
// -test.run=^TestHelperRelayProcess$ and the relayEnv variables: it runs a
// conduit.Relay with a conduitnats.Publisher and logs, as JSON lines on
// stdout, its relay's log and each Publish call (helperLine).

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/conduitnats"
	"github.com/conduit-es/conduit/conduitnats/internal/natstest"
	"github.com/conduit-es/conduit/conduittest"
)

// The environment of a relay process.
const (
	envMode     = "CONDUITNATS_RELAY_HELPER" // helperRun or helperHang; unset: not a helper
	envDatabase = "CONDUITNATS_RELAY_DATABASE_URL"
	envNATS     = "CONDUITNATS_RELAY_NATS_URL"
	envPrefix   = "CONDUITNATS_RELAY_SUBJECT_PREFIX"
	envInstance = "CONDUITNATS_RELAY_INSTANCE"
	envLease    = "CONDUITNATS_RELAY_LEASE"

	// helperRun relays until killed.
	helperRun = "run"
	// helperHang blocks forever in the first Publish call the broker
	// acknowledged whole, after logging it: the relay never records that
	// delivery.
	helperHang = "hang"
	// helperPauseAfterRead stops its own process (SIGSTOP) once, right
	// after the relay read a batch of messages from the outbox and before
	// it publishes them, after logging msgPausing.
	helperPauseAfterRead = "pause-after-read"
)

// Messages of a helper's log lines, besides the relay's own.
const (
	msgReady        = "helper ready"
	msgPublishStart = "publish start"
	msgPublishEnd   = "publish end"
	msgPausing      = "helper pausing"
	msgAcquired     = "conduit: acquired lease" // the relay's
)

// helperLine is a line a relay process logs.
type helperLine struct {
	Msg      string   `json:"msg"`
	Instance string   `json:"instance"`
	Epoch    int64    `json:"epoch"`
	Start    int64    `json:"start"` // publish start, Unix nanoseconds
	End      int64    `json:"end"`   // publish end, Unix nanoseconds
	N        int      `json:"n"`     // messages acknowledged
	IDs      []string `json:"ids"`   // the batch (start) or the acknowledged ones (end)
	Error    string   `json:"error"`
}

// TestHelperRelayProcess is the relay process of the tests below; run by
// itself it is skipped.
func TestHelperRelayProcess(t *testing.T) {
	mode := os.Getenv(envMode)
	if mode == "" {
		t.Skip("the relay process of the relay tests: they run it")
	}
	ctx := context.Background()
	log := slog.New(slog.NewJSONHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))
	lease, err := time.ParseDuration(os.Getenv(envLease))
	if err != nil {
		t.Fatalf("%s: %v", envLease, err)
	}
	poolCfg, err := pgxpool.ParseConfig(os.Getenv(envDatabase))
	if err != nil {
		t.Fatal(err)
	}
	if mode == helperPauseAfterRead {
		poolCfg.ConnConfig.Tracer = &pauseAfterRead{log: log}
	}
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	nc, err := nats.Connect(os.Getenv(envNATS), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(natstest.AsyncPublishTimeout))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := conduitnats.NewPublisher(js, &conduitnats.Config{SubjectPrefix: os.Getenv(envPrefix)})
	if err != nil {
		t.Fatal(err)
	}
	relay, err := conduit.NewRelay(store, &loggingPublisher{pub: pub, log: log, hang: mode == helperHang}, &conduit.RelayConfig{
		InstanceID:     os.Getenv(envInstance),
		LeaseDuration:  lease,
		PollInterval:   50 * time.Millisecond,
		RetryBackoff:   20 * time.Millisecond,
		PublishTimeout: time.Minute, // a hanging publish outlives the test
		Logger:         log,
	})
	if err != nil {
		t.Fatal(err)
	}
	log.Info(msgReady)
	if err := relay.Run(ctx); err != nil { // until killed
		t.Fatal(err)
	}
}

// pauseAfterRead is a pgx tracer that stops its process (see
// helperPauseAfterRead) the first time the relay's read of the outbox
// returns messages.
type pauseAfterRead struct {
	log    *slog.Logger
	paused atomic.Bool
}

type relayReadKey struct{}

func (p *pauseAfterRead) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if strings.HasPrefix(data.SQL, "-- name: OutboxListForRelay ") {
		return context.WithValue(ctx, relayReadKey{}, true)
	}
	return ctx
}

func (p *pauseAfterRead) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	if ctx.Value(relayReadKey{}) == nil || data.Err != nil || data.CommandTag.RowsAffected() == 0 || p.paused.Swap(true) {
		return
	}
	// The stop reaches every thread soon but not at once: this goroutine
	// goes on only once the process is continued.
	continued := make(chan os.Signal, 1)
	signal.Notify(continued, syscall.SIGCONT)
	defer signal.Stop(continued)
	p.log.Info(msgPausing, slog.Int64("n", data.CommandTag.RowsAffected()))
	_ = syscall.Kill(os.Getpid(), syscall.SIGSTOP)
	<-continued
}

// loggingPublisher logs each Publish call (helperLine) around pub's.
type loggingPublisher struct {
	pub  conduit.Publisher
	log  *slog.Logger
	hang bool // see helperHang
}

func (p *loggingPublisher) Publish(ctx context.Context, msgs []conduit.Message) (int, error) {
	start := time.Now().UnixNano()
	p.log.Info(msgPublishStart, slog.Int64("start", start), slog.Any("ids", ids(msgs)))
	n, err := p.pub.Publish(ctx, msgs)
	errText := ""
	if err != nil {
		errText = err.Error()
	}
	p.log.Info(msgPublishEnd, slog.Int64("start", start), slog.Int64("end", time.Now().UnixNano()),
		slog.Int("n", n), slog.Any("ids", ids(msgs[:n])), slog.String("error", errText))
	if p.hang && n == len(msgs) {
		select {} // killed here: the delivery is never recorded
	}
	return n, err
}

// relayProcess is a relay process started by a test.
type relayProcess struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and its output is read

	mu    sync.Mutex
	lines []helperLine
	raw   []string // every line, for failure messages
}

// startRelayProcess starts a relay process in mode with instance id name,
// relaying the outbox of the database at dbURL to the NATS server at
// natsURL, subjects prefixed with prefix. It is killed when the test ends.
func startRelayProcess(t *testing.T, mode, name, dbURL, natsURL, prefix string, lease time.Duration) *relayProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRelayProcess$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), envMode+"="+mode, envDatabase+"="+dbURL, envNATS+"="+natsURL,
		envPrefix+"="+prefix, envInstance+"="+name, envLease+"="+lease.String())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout // one pipe: lines in the order written
	if err := cmd.Start(); err != nil {
		t.Fatalf("start relay process %s: %v", name, err)
	}
	p := &relayProcess{t: t, name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
		for sc.Scan() {
			text := sc.Text()
			var l helperLine
			p.mu.Lock()
			p.raw = append(p.raw, text)
			if strings.HasPrefix(text, "{") && json.Unmarshal([]byte(text), &l) == nil {
				p.lines = append(p.lines, l)
			}
			p.mu.Unlock()
		}
		_ = cmd.Wait() // killed, mostly
	}()
	t.Cleanup(func() {
		p.signal(syscall.SIGKILL)
		<-p.done
		if t.Failed() {
			t.Logf("relay process %s, last lines:\n%s", name, p.tail(40))
		}
	})
	p.waitFor(60*time.Second, "ready", func(l helperLine) bool { return l.Msg == msgReady })
	return p
}

// signal sends sig to the process, unless it has exited.
func (p *relayProcess) signal(sig syscall.Signal) {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(sig) // it may have exited since
	}
}

// kill kills the process and waits for it to exit.
func (p *relayProcess) kill() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// logged returns the lines logged so far that match.
func (p *relayProcess) logged(match func(helperLine) bool) []helperLine {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []helperLine
	for _, l := range p.lines {
		if match(l) {
			out = append(out, l)
		}
	}
	return out
}

// waitFor waits until the process logs a line that matches, and returns
// it; it fails the test after timeout, or if the process exits first.
func (p *relayProcess) waitFor(timeout time.Duration, what string, match func(helperLine) bool) helperLine {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if got := p.logged(match); len(got) > 0 {
			return got[0]
		}
		select {
		case <-p.done:
			p.t.Fatalf("relay process %s exited while the test waited for %s; its output:\n%s", p.name, what, p.tail(40))
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("relay process %s: no %s after %s; its output:\n%s", p.name, what, timeout, p.tail(40))
		}
	}
}

func (p *relayProcess) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.raw[max(0, len(p.raw)-n):], "\n")
}

// testLogger returns a logger writing to t.Log: the relays' log shows with
// a failure, or with -v. Stop the relay before the test ends.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// outboxDatabase returns a fresh database with Conduit's schema, for the
// relay processes, and a store on it, for the test.
func outboxDatabase(t *testing.T) (string, *conduit.Store) {
	t.Helper()
	dbURL := conduittest.NewDatabase(t)
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	return dbURL, store
}

// enqueuer enqueues messages for keys k0, k1, ... in turn, each in a
// transaction of its own, with payload "<key>:<sequence in the key>".
type enqueuer struct {
	store *conduit.Store
	keys  int

	mu   sync.Mutex
	sent map[string]int // messages enqueued per key
	ids  []string
}

func newEnqueuer(store *conduit.Store, keys int) *enqueuer {
	return &enqueuer{store: store, keys: keys, sent: map[string]int{}}
}

// enqueue enqueues n messages, one at a time.
func (e *enqueuer) enqueue(ctx context.Context, n int) error {
	for range n {
		e.mu.Lock()
		key := "k" + strconv.Itoa(len(e.ids)%e.keys)
		m := conduit.NewMessage("orders", key, []byte(key+":"+strconv.Itoa(e.sent[key])))
		if err := e.store.Enqueue(ctx, m); err != nil {
			e.mu.Unlock()
			return err
		}
		e.sent[key]++
		e.ids = append(e.ids, m.ID.String())
		e.mu.Unlock()
	}
	return nil
}

// enqueueUntilStopped enqueues one message every pause or so, from a
// goroutine of its own, until the function it returns is called; that
// function returns the first error of an enqueue.
func (e *enqueuer) enqueueUntilStopped(ctx context.Context, pause time.Duration) (stop func() error) {
	// Stopped between enqueues, never by cancelling one: an enqueue
	// cancelled as it commits may have enqueued a message it did not count.
	stopping := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for {
			if err := e.enqueue(ctx, 1); err != nil {
				done <- err
				return
			}
			select {
			case <-stopping:
				done <- nil
				return
			case <-time.After(pause): // a steady flow, not synchronization
			}
		}
	}()
	var (
		once sync.Once
		err  error
	)
	return func() error {
		once.Do(func() { close(stopping); err = <-done })
		return err
	}
}

func (e *enqueuer) total() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.ids)
}

// checkStream checks that stream holds every message e enqueued exactly
// once (one message per Nats-Msg-Id, none other), and each key's in
// enqueue order.
func (e *enqueuer) checkStream(t *testing.T, stream jetstream.Stream) {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	msgs := natstest.ReadAll(t, stream)
	seen := map[string]bool{}
	next := map[string]int{}
	for _, m := range msgs {
		id := m.Headers().Get(jetstream.MsgIDHeader)
		if seen[id] {
			t.Errorf("message %s is in the stream twice", id)
		}
		seen[id] = true
		key := m.Headers().Get(conduitnats.KeyHeader)
		if want := key + ":" + strconv.Itoa(next[key]); string(m.Data()) != want {
			t.Errorf("key %s: got %q, want %q (per-key order broken)", key, m.Data(), want)
		}
		next[key]++
	}
	for _, id := range e.ids {
		if !seen[id] {
			t.Errorf("message %s enqueued, not in the stream", id)
		}
	}
	if len(msgs) != len(e.ids) {
		t.Errorf("stream holds %d messages, %d were enqueued", len(msgs), len(e.ids))
	}
}

// countingPublisher counts what pub acknowledges, and the failed calls.
type countingPublisher struct {
	pub      conduit.Publisher
	mu       sync.Mutex
	acked    map[string]int // times each message ID was acknowledged
	failures atomic.Int64
}

func (p *countingPublisher) Publish(ctx context.Context, msgs []conduit.Message) (int, error) {
	n, err := p.pub.Publish(ctx, msgs)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.acked == nil {
		p.acked = map[string]int{}
	}
	for _, m := range msgs[:n] {
		p.acked[m.ID.String()]++
	}
	if err != nil {
		p.failures.Add(1)
	}
	return n, err
}

func (p *countingPublisher) timesAcked(id string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acked[id]
}

// outboxStatus returns store's outbox status, or fails the test.
func outboxStatus(t *testing.T, store *conduit.Store) conduit.OutboxStatus {
	t.Helper()
	st, err := store.OutboxStatus(t.Context())
	if err != nil {
		t.Fatalf("OutboxStatus: %v", err)
	}
	return st
}

// waitForStatus polls the outbox status every 10 ms until cond holds, and
// returns it; it fails the test after timeout.
func waitForStatus(t *testing.T, store *conduit.Store, timeout time.Duration, what string, cond func(conduit.OutboxStatus) bool) conduit.OutboxStatus {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := outboxStatus(t, store)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: still waiting for %s; outbox status %+v", timeout, what, st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkDelivered checks that the outbox has nothing pending, no dead
// letters, and counts want deliveries: each message was recorded delivered
// once, by one fenced save.
func checkDelivered(t *testing.T, store *conduit.Store, want int) {
	t.Helper()
	st := outboxStatus(t, store)
	if st.Pending != 0 || st.DeadLetters != 0 || st.Held != 0 || st.Delivered != int64(want) {
		t.Errorf("outbox status: pending %d, dead letters %d, held %d, delivered %d; want 0, 0, 0, %d",
			st.Pending, st.DeadLetters, st.Held, st.Delivered, want)
	}
}

// (1) A relay killed between the broker's acknowledgement and the record
// of the delivery: the next relay publishes the batch again, with the same
// IDs, and JetStream keeps one copy of each (Nats-Msg-Id, within the
// stream's duplicate window).
func TestRelayKilledAfterPublishing(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	js := natstest.JetStream(t)
	stream := natstest.NewStream(t, js, jetstream.StreamConfig{}) // Duplicates: JetStream's default, 2 minutes
	prefix := stream.CachedInfo().Config.Name + "."
	dbURL, store := outboxDatabase(t)
	enq := newEnqueuer(store, 2)
	if err := enq.enqueue(ctx, 6); err != nil {
		t.Fatal(err)
	}

	const lease = 500 * time.Millisecond
	doomed := startRelayProcess(t, helperHang, "doomed", dbURL, natstest.URL(t), prefix, lease)
	acked := doomed.waitFor(60*time.Second, "a batch acknowledged", func(l helperLine) bool {
		return l.Msg == msgPublishEnd && l.N > 0
	})
	doomed.kill()
	// Most often the batch is all six; fewer when a transaction open
	// elsewhere on the server held some behind the relay's horizon.
	if len(acked.IDs) == 0 || !slices.Equal(acked.IDs, enq.ids[:len(acked.IDs)]) {
		t.Fatalf("the killed relay's batch: %v, want the first of %v", acked.IDs, enq.ids)
	}
	if st := outboxStatus(t, store); st.Pending != 6 || st.Delivered != 0 {
		t.Fatalf("after the kill: pending %d, delivered %d; want 6, 0 (the delivery was never recorded)", st.Pending, st.Delivered)
	}
	if info, err := stream.Info(ctx); err != nil || info.State.Msgs != 6 {
		t.Fatalf("the stream after the first publish: %v, %v; want 6 messages", info, err)
	}

	// The next relay waits for the dead one's lease to expire, then
	// publishes the batch again.
	counter := &countingPublisher{pub: newPublisher(t, js, &conduitnats.Config{SubjectPrefix: prefix})}
	relay, err := conduit.NewRelay(store, counter, &conduit.RelayConfig{
		InstanceID: "rescuer", LeaseDuration: lease, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := relay.Drain(dctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	for _, id := range enq.ids {
		if n := counter.timesAcked(id); n != 1 {
			t.Errorf("message %s published %d times by the second relay, want once (again, for the killed batch's %d)", id, n, len(acked.IDs))
		}
	}
	enq.checkStream(t, stream)
	checkDelivered(t, store, 6)
}

// (2) NATS stops for a while during a run, then starts again: the relay
// retries, nothing is lost or duplicated, each key's order holds, and
// nothing becomes a dead letter (MaxAttempts is far above what the outage
// costs).
func TestRelayNATSOutage(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := natstest.StartProcess(t)
	js := natstest.NewJetStream(t, natstest.Connect(t, srv.URL()))
	stream := natstest.NewStream(t, js, jetstream.StreamConfig{}) // file storage: it survives the restart
	_, store := outboxDatabase(t)
	enq := newEnqueuer(store, 4)

	counter := &countingPublisher{pub: newPublisher(t, js, &conduitnats.Config{
		SubjectPrefix: stream.CachedInfo().Config.Name + ".",
		AckTimeout:    time.Second, // an acknowledgement lost in the outage fails soon
	})}
	relay, err := conduit.NewRelay(store, counter, &conduit.RelayConfig{
		LeaseDuration: 2 * time.Second,
		PollInterval:  100 * time.Millisecond,
		RetryBackoff:  20 * time.Millisecond, // retried at most 600ms apart
		MaxAttempts:   conduit.MaxAttemptsLimit,
		Logger:        testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(rctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	if err := enq.enqueue(ctx, 40); err != nil {
		t.Fatal(err)
	}
	waitForStatus(t, store, 30*time.Second, "the first messages delivered", func(st conduit.OutboxStatus) bool { return st.Delivered >= 20 })

	srv.Stop()
	outage := time.Now()
	// At least 1.5s, messages enqueued throughout, and until the relay
	// failed to publish (a transaction open elsewhere on the server may hold
	// the messages behind its horizon for a while).
	for time.Since(outage) < 1500*time.Millisecond || counter.failures.Load() == 0 {
		if time.Since(outage) > 60*time.Second {
			t.Fatal("the relay tried no publish during a minute without NATS")
		}
		if err := enq.enqueue(ctx, 1); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv.Start()
	if err := enq.enqueue(ctx, 40); err != nil {
		t.Fatal(err)
	}

	total := enq.total()
	waitForStatus(t, store, 60*time.Second, "every message delivered", func(st conduit.OutboxStatus) bool {
		return st.Pending == 0 && st.Delivered == int64(total)
	})
	t.Logf("%d messages, %d failed publish calls during the outage", total, counter.failures.Load())
	enq.checkStream(t, stream)
	checkDelivered(t, store, total)
}

// leaseHolder is the relay's lease holder at one moment, read from
// conduit.outbox_relay (the epoch is not in OutboxStatus).
type leaseHolder struct {
	owner string
	epoch int64
}

// watchLease polls the lease's holder every 5 ms until the test ends, and
// returns a function listing the holders seen, in order, repeats dropped.
func watchLease(t *testing.T, store *conduit.Store) func() []leaseHolder {
	ctx, cancel := context.WithCancel(context.Background())
	var (
		mu   sync.Mutex
		seen []leaseHolder
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			var h leaseHolder
			err := store.Pool().QueryRow(ctx, "SELECT coalesce(owner, ''), epoch FROM conduit.outbox_relay").Scan(&h.owner, &h.epoch)
			if err == nil {
				mu.Lock()
				if len(seen) == 0 || seen[len(seen)-1] != h {
					seen = append(seen, h)
				}
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func() []leaseHolder {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// (3) Two relay processes; the one holding the lease is paused (SIGSTOP)
// while messages are enqueued without a break, then resumed (SIGCONT).
//
// What is asserted:
//   - Before the pause only the lease holder publishes: the standby starts
//     no Publish call.
//   - The standby takes the lease (a higher epoch) within a bound of the
//     pause, and delivery goes on.
//   - Once resumed, the paused relay never holds the lease again: the
//     holders seen in conduit.outbox_relay go from it to the other with a
//     higher epoch, and never back; it logs no second acquisition.
//   - Never both delivering: at most one Publish call of the paused relay
//     ends after the other's first one starts, namely the call it was in
//     when paused (a batch read before the pause but not yet handed over
//     is not published: the relay checks its lease by its own clock first,
//     see TestRelayPausedBeforePublishing). What that call sends after the
//     resume, until the keeper finds the lease lost and cancels it,
//     JetStream drops by Nats-Msg-Id, and its save is refused by the epoch.
//   - Each message's delivery is recorded once (OutboxStatus.Delivered
//     equals the messages enqueued): no save of the paused relay, fenced by
//     its old epoch, went through after the other took over.
//   - The stream holds every message exactly once, each key's in enqueue
//     order, through the failover.
func TestRelayFailoverPausedProcess(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	js := natstest.JetStream(t)
	stream := natstest.NewStream(t, js, jetstream.StreamConfig{})
	prefix := stream.CachedInfo().Config.Name + "."
	dbURL, store := outboxDatabase(t)
	holders := watchLease(t, store)

	// Two seconds: a lease holder starved by a noisy machine for a moment
	// keeps its lease.
	const lease = 2 * time.Second
	first := startRelayProcess(t, helperRun, "relay-a", dbURL, natstest.URL(t), prefix, lease)
	firstAcq := first.waitFor(30*time.Second, "the lease", func(l helperLine) bool { return l.Msg == msgAcquired })
	second := startRelayProcess(t, helperRun, "relay-b", dbURL, natstest.URL(t), prefix, lease)

	enq := newEnqueuer(store, 5)
	stopEnqueuing := enq.enqueueUntilStopped(ctx, 2*time.Millisecond)
	defer func() { _ = stopEnqueuing() }()

	waitForStatus(t, store, 30*time.Second, "deliveries by relay-a", func(st conduit.OutboxStatus) bool {
		return st.Owner == "relay-a" && st.Delivered >= 50
	})
	if err := first.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	resumed := false
	defer func() {
		if !resumed {
			first.signal(syscall.SIGCONT)
		}
	}()
	// The lease runs out LeaseDuration after relay-a's last renewal, at
	// most a third of it before the pause; relay-b checks every
	// LeaseDuration/3. The bound leaves room for a slow machine.
	const takeoverBound = 3*lease + 10*time.Second
	st := waitForStatus(t, store, takeoverBound, "relay-b to take over", func(st conduit.OutboxStatus) bool { return st.Owner == "relay-b" })
	t.Logf("relay-b took over %s after the pause", time.Since(paused).Round(time.Millisecond))
	secondAcq := second.waitFor(10*time.Second, "relay-b's acquisition", func(l helperLine) bool { return l.Msg == msgAcquired })
	if secondAcq.Epoch <= firstAcq.Epoch {
		t.Errorf("relay-b's epoch %d is not above relay-a's %d", secondAcq.Epoch, firstAcq.Epoch)
	}
	atTakeover := st.Delivered
	waitForStatus(t, store, 30*time.Second, "deliveries by relay-b", func(st conduit.OutboxStatus) bool {
		return st.Delivered >= atTakeover+50
	})

	if err := first.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	cont := time.Now()
	st = outboxStatus(t, store)
	// relay-a runs again while messages flow: it has had its chance to
	// deliver once another 50 are delivered.
	waitForStatus(t, store, 30*time.Second, "deliveries after relay-a resumed", func(s conduit.OutboxStatus) bool {
		return s.Delivered >= st.Delivered+50
	})

	if err := stopEnqueuing(); err != nil {
		t.Fatalf("enqueue: %v", err)
	}
	total := enq.total()
	waitForStatus(t, store, 60*time.Second, "every message delivered", func(st conduit.OutboxStatus) bool {
		return st.Pending == 0 && st.Delivered == int64(total)
	})
	if st := outboxStatus(t, store); st.Owner != "relay-b" {
		t.Errorf("lease holder at the end: %q, want relay-b", st.Owner)
	}

	// The lease: relay-a, then relay-b with a higher epoch, never relay-a again.
	var owners []leaseHolder
	for _, h := range holders() {
		if h.owner != "" {
			owners = append(owners, h)
		}
	}
	if len(owners) != 2 || owners[0].owner != "relay-a" || owners[1].owner != "relay-b" || owners[1].epoch <= owners[0].epoch {
		t.Errorf("lease holders seen: %+v; want relay-a, then relay-b with a higher epoch", owners)
	}
	if n := len(first.logged(func(l helperLine) bool { return l.Msg == msgAcquired })); n != 1 {
		t.Errorf("relay-a acquired the lease %d times, want once", n)
	}

	// Never both delivering.
	calls := func(p *relayProcess) []helperLine {
		return p.logged(func(l helperLine) bool { return l.Msg == msgPublishEnd })
	}
	secondCalls := calls(second)
	if len(secondCalls) == 0 {
		t.Fatal("relay-b never published")
	}
	if s := time.Unix(0, secondCalls[0].Start); s.Before(paused) {
		t.Errorf("relay-b published at %s, before relay-a was paused at %s", s, paused)
	}
	var overlapping []helperLine
	for _, c := range calls(first) {
		if c.End > secondCalls[0].Start {
			overlapping = append(overlapping, c)
		}
	}
	if len(overlapping) > 1 {
		t.Errorf("%d Publish calls of relay-a end after relay-b's first started, want at most its batch in flight: %+v", len(overlapping), overlapping)
	}
	for _, c := range overlapping {
		t.Logf("relay-a's call in flight across the pause: %d messages acknowledged, started %s before the resume, error %q",
			c.N, cont.Sub(time.Unix(0, c.Start)).Round(time.Millisecond), c.Error)
	}
	t.Logf("%d messages; lease holders %+v", total, owners)

	enq.checkStream(t, stream)
	checkDelivered(t, store, total)
}

// A relay process stopped (SIGSTOP, as a VM freeze or a long stall would)
// right after reading a batch and before publishing it, then resumed
// after another relay took over, delivered that batch and released the
// lease, and after the stream's duplicate window: the resumed relay must
// not publish its stale batch, which JetStream would store again (no
// longer a duplicate by its ID), after the messages the other relay
// delivered. It sees that its lease ran out by its own clock, drops it,
// and takes it again to find nothing left to deliver.
func TestRelayPausedBeforePublishing(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	js := natstest.JetStream(t)
	const window = time.Second // the stream's duplicate window
	stream := natstest.NewStream(t, js, jetstream.StreamConfig{Duplicates: window})
	prefix := stream.CachedInfo().Config.Name + "."
	dbURL, store := outboxDatabase(t)

	const lease = 500 * time.Millisecond
	stale := startRelayProcess(t, helperPauseAfterRead, "stale", dbURL, natstest.URL(t), prefix, lease)
	stale.waitFor(30*time.Second, "the lease", func(l helperLine) bool { return l.Msg == msgAcquired })
	enq := newEnqueuer(store, 2)
	if err := enq.enqueue(ctx, 10); err != nil {
		t.Fatal(err)
	}
	stale.waitFor(30*time.Second, "the pause", func(l helperLine) bool { return l.Msg == msgPausing })
	defer stale.signal(syscall.SIGCONT)

	relay, err := conduit.NewRelay(store, newPublisher(t, js, &conduitnats.Config{SubjectPrefix: prefix}), &conduit.RelayConfig{
		InstanceID: "rescuer", LeaseDuration: lease, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := relay.Drain(dctx); err != nil { // takes over once the stale relay's lease expires
		t.Fatalf("Drain: %v", err)
	}
	enq.checkStream(t, stream)
	time.Sleep(2 * window) // JetStream forgets the IDs: a bounded wait, not synchronization

	if err := stale.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// It takes the lease again (the rescuer released it) only after it
	// failed to save its batch, or gave it up before publishing.
	stale.waitFor(30*time.Second, "the stale relay's second acquisition", func(l helperLine) bool {
		return l.Msg == msgAcquired && l.Epoch > 1
	})
	if calls := stale.logged(func(l helperLine) bool { return l.Msg == msgPublishStart }); len(calls) > 0 {
		t.Errorf("the resumed relay published its stale batch of %d messages", len(calls[0].IDs))
	}
	enq.checkStream(t, stream)
	checkDelivered(t, store, 10)
}
