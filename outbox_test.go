package conduit_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
)

// recorder is a publisher that records what it is given, and fails messages
// while fail says so.
type recorder struct {
	mu   sync.Mutex
	got  []conduit.Message
	fail func(m conduit.Message) error
}

func (r *recorder) publish(_ context.Context, m conduit.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		if err := r.fail(m); err != nil {
			return err
		}
	}
	r.got = append(r.got, m)
	return nil
}

func (r *recorder) setFail(f func(m conduit.Message) error) {
	r.mu.Lock()
	r.fail = f
	r.mu.Unlock()
}

func (r *recorder) messages() []conduit.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// payloads lists the payloads of key's messages, in delivery order ("" for
// all).
func (r *recorder) payloads(key string) []string {
	var out []string
	for _, m := range r.messages() {
		if key == "" || m.Key == key {
			out = append(out, string(m.Payload))
		}
	}
	return out
}

func newRelay(t testing.TB, store *conduit.Store, rec *recorder, cfg *conduit.RelayConfig) *conduit.Relay {
	t.Helper()
	r, err := conduit.NewRelay(store, conduit.PublishFunc(rec.publish), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func drain(t testing.TB, ctx context.Context, r *conduit.Relay) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := r.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
}

func runRelay(t testing.TB, r *conduit.Relay) (stop func()) {
	t.Helper()
	return runWorker(t, "relay", r.Run)
}

// The plainest use: a rule on the store publishes every order_paid; the
// append's own call enqueues it; the relay delivers it with the event's id.
func TestOutboxRuleWithAppend(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, &conduit.Config{Outbox: []conduit.OutboxRule{
		{EventType: "order_paid", Topic: "orders.paid"},
	}})
	paid, err := conduit.NewEvent("order_paid", map[string]any{"order": "o-1", "cents": 1250})
	if err != nil {
		t.Fatal(err)
	}
	placed, err := conduit.NewEvent("order_placed", map[string]any{"order": "o-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, "order-o-1", conduit.NoStream, placed, paid); err != nil {
		t.Fatal(err)
	}
	// A resend of the same call (outcome unknown) is an idempotent retry:
	// it enqueues nothing again.
	res, err := store.Append(ctx, "order-o-1", conduit.NoStream, placed, paid)
	if err != nil || !res.Duplicate {
		t.Fatalf("resend: %+v, %v; want an idempotent retry", res, err)
	}
	rec := &recorder{}
	drain(t, ctx, newRelay(t, store, rec, nil))
	got := rec.messages()
	if len(got) != 1 {
		t.Fatalf("delivered %d messages, want 1: %+v", len(got), got)
	}
	m := got[0]
	if m.ID != paid.ID || m.Topic != "orders.paid" || m.Key != "order-o-1" ||
		m.Headers["Conduit-Event-Type"] != "order_paid" || m.Headers["Conduit-Stream"] != "order-o-1" {
		t.Fatalf("message %+v; want the event's id, the rule's topic, the stream as key, headers", m)
	}
	var body map[string]any
	if err := json.Unmarshal(m.Payload, &body); err != nil || body["cents"] != float64(1250) {
		t.Fatalf("payload %s: %v", m.Payload, err)
	}
	st, err := store.OutboxStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 0 || st.Delivered != 1 || st.LastDeliveryAt.IsZero() || st.Owner != "" {
		t.Fatalf("status after drain: %+v", st)
	}
}

// A rule's Message function shapes the message; its error refuses the
// append, which stores nothing.
func TestOutboxRuleMessageFunc(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, &conduit.Config{Outbox: []conduit.OutboxRule{{
		EventType: "order_paid",
		Message: func(e conduit.Event) (conduit.Message, error) {
			var body struct{ Customer string }
			if err := json.Unmarshal(e.Data, &body); err != nil || body.Customer == "" {
				return conduit.Message{}, errors.New("no customer")
			}
			return conduit.Message{Topic: "billing." + body.Customer, Key: body.Customer, Payload: e.Data}, nil
		},
	}}})
	good := mustEvent(t, "order_paid", map[string]string{"Customer": "c7"})
	if _, err := store.Append(ctx, "order-1", conduit.Any, good); err != nil {
		t.Fatal(err)
	}
	_, err := store.Append(ctx, "order-2", conduit.Any, mustEvent(t, "order_paid", map[string]string{}))
	var ve *conduit.ValidationError
	if !errors.As(err, &ve) || ve.Field != "outbox message" || !errors.Is(err, conduit.ErrInvalidEvent) {
		t.Fatalf("append with a failing rule: %v; want a *ValidationError on the outbox message", err)
	}
	if n := countEvents(t, ctx, pool, "order-2"); n != 0 {
		t.Fatalf("a refused append stored %d events", n)
	}
	rec := &recorder{}
	drain(t, ctx, newRelay(t, store, rec, nil))
	got := rec.messages()
	if len(got) != 1 || got[0].ID != good.ID || got[0].Topic != "billing.c7" || got[0].Key != "c7" {
		t.Fatalf("delivered %+v", got)
	}
}

// Enqueue in a transaction that rolls back delivers nothing; one that
// commits delivers, with an AppendTx in the same transaction.
func TestOutboxEnqueueTxRollback(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	lost := conduit.NewMessage("t", "k", []byte("rolled back"))
	kept := conduit.NewMessage("t", "k", []byte("committed"))
	err := store.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := store.AppendTx(ctx, tx, "s-1", conduit.NoStream, mustEvent(t, "e", 1)); err != nil {
			return err
		}
		if err := store.EnqueueTx(ctx, tx, lost); err != nil {
			return err
		}
		return errors.New("changed my mind")
	})
	if err == nil {
		t.Fatal("InTx: want the function's error")
	}
	err = store.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := store.AppendTx(ctx, tx, "s-1", conduit.NoStream, mustEvent(t, "e", 1)); err != nil {
			return err
		}
		return store.EnqueueTx(ctx, tx, kept)
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	drain(t, ctx, newRelay(t, store, rec, nil))
	if got := rec.payloads(""); !slices.Equal(got, []string{"committed"}) {
		t.Fatalf("delivered %q; want only the committed message", got)
	}
	if n := countEvents(t, ctx, pool, "s-1"); n != 1 {
		t.Fatalf("%d events", n)
	}
}

// Bad messages get a typed error and nothing is written.
func TestOutboxEnqueueValidation(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)
	long := string(make([]byte, conduit.MaxTopicLength+1))
	for name, m := range map[string]conduit.Message{
		"zero id":     {Topic: "t", Payload: []byte("x")},
		"no topic":    conduit.NewMessage("", "k", nil),
		"long topic":  conduit.NewMessage(long, "k", nil),
		"bad key":     conduit.NewMessage("t", "\xff", nil),
		"big payload": conduit.NewMessage("t", "k", make([]byte, conduit.MaxEventSizeDefault+1)),
	} {
		err := store.Enqueue(ctx, conduit.NewMessage("t", "k", []byte("ok")), m)
		var ve *conduit.ValidationError
		if !errors.As(err, &ve) || ve.Index != 1 || !errors.Is(err, conduit.ErrInvalidEvent) {
			t.Errorf("%s: %v; want a *ValidationError for message 1", name, err)
		}
	}
	st, err := store.OutboxStatus(ctx)
	if err != nil || st.Pending != 0 {
		t.Fatalf("status %+v, %v; want nothing enqueued", st, err)
	}
}

// Per key, messages go in the order of commits: a transaction that commits
// late is not skipped (it holds the horizon), and a second transaction
// enqueueing to the same key waits for the first (the key's lock).
func TestOutboxLateCommitKeepsKeyOrder(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	rec := &recorder{}
	relay := newRelay(t, store, rec, &conduit.RelayConfig{PollInterval: 10 * time.Millisecond})

	late, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx) //nolint:errcheck
	if err := store.EnqueueTx(ctx, late, conduit.NewMessage("t", "a", []byte("a1"))); err != nil {
		t.Fatal(err)
	}
	if err := store.Enqueue(ctx, conduit.NewMessage("t", "b", []byte("b1"))); err != nil {
		t.Fatal(err)
	}
	stop := runRelay(t, relay)
	// b1 committed, but behind the horizon the late transaction holds.
	time.Sleep(100 * time.Millisecond)
	if got := rec.payloads(""); len(got) != 0 {
		t.Fatalf("delivered %q while an older transaction was open", got)
	}
	second := make(chan error, 1)
	go func() { second <- store.Enqueue(ctx, conduit.NewMessage("t", "a", []byte("a2"))) }()
	waitBlockedBy(t, ctx, pool, backendPID(t, ctx, late))
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	stop()
	drain(t, ctx, relay)
	if got := rec.payloads("a"); !slices.Equal(got, []string{"a1", "a2"}) {
		t.Fatalf("key a delivered %q; want a1, a2", got)
	}
	if got := rec.payloads(""); len(got) != 3 {
		t.Fatalf("delivered %q; want 3", got)
	}
}

// A poison message is retried MaxAttempts times, then dead-lettered; other
// keys flow, later messages of its key are held; a retry delivers it and
// then the held ones, in order; a discard drops it and delivers the held.
func TestOutboxPoisonMessage(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	rec := &recorder{}
	rec.setFail(func(m conduit.Message) error {
		if string(m.Payload) == "a1" || string(m.Payload) == "c1" {
			return fmt.Errorf("broker refuses %s", m.Payload)
		}
		return nil
	})
	relay := newRelay(t, store, rec, &conduit.RelayConfig{MaxAttempts: 3, RetryBackoff: time.Millisecond})
	var msgs []conduit.Message
	for _, p := range []string{"a1", "b1", "a2", "c1", "b2", "a3", "c2"} {
		msgs = append(msgs, conduit.NewMessage("t", p[:1], []byte(p)))
	}
	if err := store.Enqueue(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	drain(t, ctx, relay)
	if got := rec.payloads(""); !slices.Equal(got, []string{"b1", "b2"}) {
		t.Fatalf("delivered %q; want the other key's b1, b2 only", got)
	}
	dead, err := store.DeadLetters(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 2 || string(dead[0].Payload) != "a1" || string(dead[1].Payload) != "c1" ||
		dead[0].Attempts != 3 || dead[0].LastError != "broker refuses a1" || dead[0].Status != "dead" {
		t.Fatalf("dead letters %+v", dead)
	}
	all, err := store.DeadLetters(ctx, true)
	if err != nil || len(all) != 5 {
		t.Fatalf("dead letters with held: %d, %v; want 5: a1, a2, c1, a3, c2", len(all), err)
	}
	st, err := store.OutboxStatus(ctx)
	if err != nil || st.DeadLetters != 2 || st.Held != 3 || st.Pending != 0 {
		t.Fatalf("status %+v, %v; want 2 dead letters, 3 held (a2, a3, c2)", st, err)
	}

	// The broker is fixed: retry a1 from Go, discard c1 from SQL.
	rec.setFail(nil)
	if err := store.RetryDeadLetter(ctx, dead[0].ID); err != nil {
		t.Fatal(err)
	}
	var found bool
	if err := pool.QueryRow(ctx, "SELECT conduit.discard_dead_letter($1)", dead[1].ID).Scan(&found); err != nil || !found {
		t.Fatalf("discard_dead_letter: %v, %v", found, err)
	}
	if err := store.RetryDeadLetter(ctx, uuid.Must(uuid.NewV7())); !errors.Is(err, conduit.ErrNoDeadLetter) {
		t.Fatalf("retry of an unknown id: %v", err)
	}
	// A later message of key a must still wait for the held ones.
	if err := store.Enqueue(ctx, conduit.NewMessage("t", "a", []byte("a4"))); err != nil {
		t.Fatal(err)
	}
	drain(t, ctx, relay)
	if got := rec.payloads("a"); !slices.Equal(got, []string{"a1", "a2", "a3", "a4"}) {
		t.Fatalf("key a delivered %q; want a1..a4 in order", got)
	}
	if got := rec.payloads("c"); !slices.Equal(got, []string{"c2"}) {
		t.Fatalf("key c delivered %q; want c2 (c1 discarded)", got)
	}
	st, err = store.OutboxStatus(ctx)
	if err != nil || st.DeadLetters != 0 || st.Held != 0 {
		t.Fatalf("status %+v, %v; want no dead letters left", st, err)
	}
}

// Publish failures are retried with backoff; while the message at the head
// fails, later ones wait; after the failures stop, everything goes, in
// order, and nothing is dead-lettered.
func TestOutboxTransientFailures(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)
	var mu sync.Mutex
	failures := 4
	rec := &recorder{}
	rec.setFail(func(conduit.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if failures > 0 {
			failures--
			return errors.New("broker down")
		}
		return nil
	})
	relay := newRelay(t, store, rec, &conduit.RelayConfig{MaxAttempts: 10, RetryBackoff: time.Millisecond})
	var want []string
	for i := range 50 {
		p := fmt.Sprintf("m%02d", i)
		want = append(want, p)
		if err := store.Enqueue(ctx, conduit.NewMessage("t", "k", []byte(p))); err != nil {
			t.Fatal(err)
		}
	}
	drain(t, ctx, relay)
	if got := rec.payloads("k"); !slices.Equal(got, want) {
		t.Fatalf("delivered %q", got)
	}
	if dead, err := store.DeadLetters(ctx, true); err != nil || len(dead) != 0 {
		t.Fatalf("dead letters %+v, %v", dead, err)
	}
}

// An unavailable broker (an error matching ErrBrokerUnavailable) is retried
// for as long as it lasts, and counts no attempt: well past MaxAttempts
// failures, nothing becomes a dead letter, and order holds.
func TestOutboxBrokerUnavailable(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)
	var mu sync.Mutex
	outage := 12
	rec := &recorder{}
	rec.setFail(func(conduit.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if outage > 0 {
			outage--
			return fmt.Errorf("connection refused: %w", conduit.ErrBrokerUnavailable)
		}
		return nil
	})
	relay := newRelay(t, store, rec, &conduit.RelayConfig{MaxAttempts: 2, RetryBackoff: time.Millisecond})
	var want []string
	for i := range 5 {
		p := fmt.Sprintf("m%d", i)
		want = append(want, p)
		if err := store.Enqueue(ctx, conduit.NewMessage("t", "k", []byte(p))); err != nil {
			t.Fatal(err)
		}
	}
	drain(t, ctx, relay)
	if got := rec.payloads("k"); !slices.Equal(got, want) {
		t.Fatalf("delivered %q; want %q", got, want)
	}
	if dead, err := store.DeadLetters(ctx, true); err != nil || len(dead) != 0 {
		t.Fatalf("dead letters %+v, %v; want none after an outage", dead, err)
	}
}

// A publisher that hangs, ignoring its context, fails at PublishTimeout:
// the message counts a failed attempt even if the publisher then reports
// success, and after MaxAttempts it is a dead letter naming the timeout.
func TestOutboxPublishTimeout(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)
	pub := conduit.PublishFunc(func(ctx context.Context, m conduit.Message) error {
		if string(m.Payload) == "slow" {
			time.Sleep(200 * time.Millisecond) // does not watch ctx meanwhile
			return ctx.Err()
		}
		return nil
	})
	relay, err := conduit.NewRelay(store, pub, &conduit.RelayConfig{
		PublishTimeout: 50 * time.Millisecond, RetryBackoff: time.Millisecond, MaxAttempts: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Enqueue(ctx, conduit.NewMessage("t", "k", []byte("slow")), conduit.NewMessage("t", "k", []byte("next"))); err != nil {
		t.Fatal(err)
	}
	drain(t, ctx, relay)
	dead, err := store.DeadLetters(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 2 || string(dead[0].Payload) != "slow" || dead[0].Attempts != 2 ||
		!strings.Contains(dead[0].LastError, "PublishTimeout") || dead[1].Status != "held" {
		t.Fatalf("dead letters %+v; want slow dead after 2 timeouts, next held", dead)
	}
}

// Two relays: exactly one delivers at a time; when it stops, the other
// takes over, and every message is delivered in key order.
func TestOutboxRelayFailover(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)
	rec := &recorder{}
	var mu sync.Mutex
	owners := map[string]int{}
	mk := func(id string) *conduit.Relay {
		r, err := conduit.NewRelay(store, conduit.PublishFunc(func(ctx context.Context, m conduit.Message) error {
			mu.Lock()
			owners[id]++
			mu.Unlock()
			return rec.publish(ctx, m)
		}), &conduit.RelayConfig{InstanceID: id, LeaseDuration: 300 * time.Millisecond, PollInterval: 5 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	first, second := mk("first"), mk("second")
	stopFirst := runRelay(t, first)
	var want []string
	enqueue := func(n int) {
		for range n {
			p := fmt.Sprintf("m%03d", len(want))
			want = append(want, p)
			if err := store.Enqueue(ctx, conduit.NewMessage("t", "k", []byte(p))); err != nil {
				t.Fatal(err)
			}
		}
	}
	enqueue(50)
	runRelay(t, second)
	enqueue(50)
	stopFirst()
	enqueue(50)
	drain(t, ctx, mk("drainer"))
	// At least once: a relay whose renewal came late (a loaded machine)
	// loses its lease between publishing and recording, and its successor
	// publishes those messages again. What a de-duplicating consumer sees
	// (each ID at its first delivery) is every message, in order.
	got := rec.payloads("k")
	seen := map[string]bool{}
	var firsts []string
	for _, p := range got {
		if !seen[p] {
			seen[p] = true
			firsts = append(firsts, p)
		}
	}
	if !slices.Equal(firsts, want) {
		t.Fatalf("first deliveries %q; want %d messages in order", firsts, len(want))
	}
	if len(got) > len(want) {
		t.Logf("%d messages delivered again after a change of owner", len(got)-len(want))
	}
	mu.Lock()
	defer mu.Unlock()
	if owners["second"] == 0 {
		t.Fatalf("the second relay never delivered after the first stopped: %v", owners)
	}
}

// The outbox stays bounded: with the relay keeping up, generations switch
// and delivered ones are truncated whole.
func TestOutboxGenerationsRetire(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	rec := &recorder{}
	relay := newRelay(t, store, rec, &conduit.RelayConfig{RowsPerGeneration: 1000})
	seen := map[int]bool{}
	total := 0
	for round := range 12 {
		msgs := make([]conduit.Message, 500)
		for i := range msgs {
			msgs[i] = conduit.NewMessage("t", fmt.Sprintf("k%d", i%7), []byte(fmt.Sprintf("%d-%d", round, i)))
		}
		if err := store.Enqueue(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
		total += len(msgs)
		drain(t, ctx, relay)
		st, err := store.OutboxStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		seen[st.Generation] = true
		time.Sleep(relayRetireWait) // let the next drain retire
	}
	if len(rec.messages()) != total {
		t.Fatalf("delivered %d of %d", len(rec.messages()), total)
	}
	if len(seen) < 3 {
		t.Fatalf("generations used: %v; want all three in turn", seen)
	}
	var rows int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM conduit.outbox").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows > 3*1000+500 {
		t.Fatalf("%d rows left in the outbox after delivering %d; want at most about three generations", rows, total)
	}
}

const relayRetireWait = 1100 * time.Millisecond

// A generation left by a switch is truncated once delivered, even if no
// message follows: a burst that fills a generation, then quiet, leaves an
// empty outbox (the relay used to retire again only after its next
// delivery, so the burst stayed on disk until more messages came).
func TestOutboxGenerationTruncatedWhenIdle(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	rec := &recorder{}
	relay := newRelay(t, store, rec, &conduit.RelayConfig{RowsPerGeneration: 1000, PollInterval: 50 * time.Millisecond})
	runRelay(t, relay)
	msgs := make([]conduit.Message, 1000)
	for i := range msgs {
		msgs[i] = conduit.NewMessage("t", fmt.Sprintf("k%d", i%7), []byte(strconv.Itoa(i)))
	}
	if err := store.Enqueue(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := store.OutboxStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var rows int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM conduit.outbox").Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if st.Pending == 0 && st.Generation == 1 && rows == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after a 1,000-message burst: pending %d, generation %d, %d rows in the outbox; want 0, 1, 0",
				st.Pending, st.Generation, rows)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A generation a reader keeps locked when the relay would truncate it (the
// truncation never waits for a lock) is truncated later even if no message
// follows: while idle the relay retires every few seconds.
func TestOutboxGenerationTruncatedAfterLockConflict(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	reader, err := pool.Begin(ctx) // holds a lock on generation 0 until it ends
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reader.Rollback(ctx) }()
	if _, err := reader.Exec(ctx, "SELECT count(*) FROM conduit.outbox_g0"); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	relay := newRelay(t, store, rec, &conduit.RelayConfig{RowsPerGeneration: 1000, PollInterval: 50 * time.Millisecond})
	runRelay(t, relay)
	msgs := make([]conduit.Message, 1000)
	for i := range msgs {
		msgs[i] = conduit.NewMessage("t", fmt.Sprintf("k%d", i%7), []byte(strconv.Itoa(i)))
	}
	if err := store.Enqueue(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for st, err := store.OutboxStatus(ctx); err != nil || st.Pending != 0 || st.Generation != 1; st, err = store.OutboxStatus(ctx) {
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("30s after the burst: %+v, %v; want nothing pending and generation 1", st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(2 * relayRetireWait) // the retires after the switch find generation 0 locked
	if err := reader.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		var rows int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM conduit.outbox").Scan(&rows); err != nil {
			t.Fatal(err)
		}
		if rows == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after the lock on generation 0 went: %d rows still in the outbox", rows)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A full batch's save goes on while the next batch is published. When that
// save finds the lease gone (taken by another instance, here by hand), the
// relay stops, and the messages from its last saved checkpoint on are
// published again, in order: nothing is lost, and the copies go back no
// further than the two batches in flight. A Drain that ends leaves its
// last batch saved.
func TestOutboxRelaySaveAheadFindsLeaseGone(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	const batch, total = 10, 200
	var want []string
	for i := range total {
		p := fmt.Sprintf("m%03d", i)
		want = append(want, p)
		if err := store.Enqueue(ctx, conduit.NewMessage("t", "k"+strconv.Itoa(i%3), []byte(p))); err != nil {
			t.Fatal(err)
		}
	}
	rec := &recorder{}
	var stole sync.Once
	steal := func() {
		// Another instance takes the lease (a new epoch) while this batch
		// is published and the previous one's save may be in flight.
		if _, err := pool.Exec(ctx, `UPDATE conduit.outbox_relay SET owner = 'thief', epoch = epoch + 1,
			lease_expires_at = now() + interval '300 milliseconds'`); err != nil {
			t.Error(err)
		}
	}
	relay, err := conduit.NewRelay(store, conduit.PublishFunc(func(ctx context.Context, m conduit.Message) error {
		if string(m.Payload) == "m055" {
			stole.Do(steal)
		}
		return rec.publish(ctx, m)
	}), &conduit.RelayConfig{BatchSize: batch, LeaseDuration: time.Second, PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	drain(t, ctx, relay)
	st, err := store.OutboxStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 0 || st.Owner != "" {
		t.Errorf("after Drain: %d pending, owner %q; want 0 and none (the last batch saved, the lease released)", st.Pending, st.Owner)
	}
	got := rec.payloads("")
	seen := map[string]int{}
	var firsts []string
	for _, p := range got {
		if seen[p] == 0 {
			firsts = append(firsts, p)
		}
		seen[p]++
	}
	if !slices.Equal(firsts, want) {
		t.Fatalf("first deliveries %q; want %d messages in order", firsts, len(want))
	}
	again := len(got) - len(want)
	if again == 0 || again > 2*batch {
		t.Errorf("%d messages delivered again; want some (the lease was taken mid-run) and at most two batches (%d)", again, 2*batch)
	}
	for _, key := range []string{"k0", "k1", "k2"} {
		// Per key, a copy only ever repeats a run that was delivered
		// before, from an earlier point: order by first delivery holds.
		var firstsOfKey []string
		seenKey := map[string]bool{}
		for _, p := range rec.payloads(key) {
			if !seenKey[p] {
				seenKey[p] = true
				firstsOfKey = append(firstsOfKey, p)
			}
		}
		if !slices.IsSorted(firstsOfKey) {
			t.Errorf("key %s: first deliveries out of order: %q", key, firstsOfKey)
		}
	}
}

// A rule's message keyed by something other than its stream keeps its key's
// order of commits: the append takes the key's lock as well as the
// stream's, before its transaction has an id, so it waits for a
// transaction that holds the key, and its id (the relay's order) comes
// after that one's. So do the batch functions that concurrent appends go
// through.
func TestOutboxRuleKeyOrderFollowsCommits(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	const key = "customer-7"
	store, pool := newStore(t, &conduit.Config{Outbox: []conduit.OutboxRule{{
		EventType: "order_paid",
		Message: func(e conduit.Event) (conduit.Message, error) {
			return conduit.Message{Topic: "billing", Key: key, Payload: []byte(e.StreamID)}, nil
		},
	}}})
	// holdKey enqueues payload to the key in a transaction left open.
	holdKey := func(payload string) pgx.Tx {
		t.Helper()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
		if err := store.EnqueueTx(ctx, tx, conduit.NewMessage("billing", key, []byte(payload))); err != nil {
			t.Fatal(err)
		}
		return tx
	}
	// waitsFor runs f, checks that it waits for holder's lock, commits
	// holder, and waits for f.
	waitsFor := func(what string, holder pgx.Tx, f func() error) {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- f() }()
		waitBlockedOrDone(t, ctx, pool, backendPID(t, ctx, holder), done, what)
		if err := holder.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	waitsFor("an append alone", holdKey("held-1"), func() error {
		_, err := store.Append(ctx, "order-1", conduit.NoStream, mustEvent(t, "order_paid", 1))
		return err
	})
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for i, name := range []string{"append_batch_one_outbox", "append_batch"} {
		q, args := keyedBatchCall(name, key, i)
		waitsFor(name, holdKey(fmt.Sprintf("held-%d", i+2)), func() error {
			_, err := conn.Exec(ctx, q, args...)
			return err
		})
	}

	rec := &recorder{}
	drain(t, ctx, newRelay(t, store, rec, nil))
	want := []string{"held-1", "order-1", "held-2", "append_batch_one_outbox", "held-3", "append_batch"}
	if got := rec.payloads(key); !slices.Equal(got, want) {
		t.Fatalf("key %s delivered %q; want the order of commits, %q", key, got, want)
	}
}

// keyedBatchCall is a call of batch function fn (as a batch of appends
// calls it) with two single-event appends to new streams, the first of
// which enqueues a message to key, whose payload is fn's name.
func keyedBatchCall(fn, key string, i int) (string, []any) {
	streams := []string{fmt.Sprintf("%s-%d-a", fn, i), fmt.Sprintf("%s-%d-b", fn, i)}
	ids := []string{uuid.NewString(), uuid.NewString()}
	types, data, meta := []string{"noted", "noted"}, []string{`{}`, `{}`}, []string{"", ""}
	msg := []any{[]int32{1}, []string{uuid.NewString()}, []string{"billing"}, []string{key}, [][]byte{[]byte(fn)}, []string{""}}
	if fn == "append_batch" {
		return `SELECT conduit.append_batch($1::text[], $2::bigint[], $3::integer[], $4::text[]::uuid[], $5::text[], $6::text[], $7::text[],
		                                   $8::integer[], $9::text[]::uuid[], $10::text[], $11::text[], $12::bytea[], $13::text[])`,
			append([]any{streams, []int64{0, 0}, []int32{1, 2}, ids, types, data, meta}, msg...)
	}
	return `SELECT conduit.append_batch_one_outbox($1::text[], $2::bigint[], $3::text[]::uuid[], $4::text[], $5::text[], $6::text[],
	                                             $7::integer[], $8::text[]::uuid[], $9::text[], $10::text[], $11::bytea[], $12::text[])`,
		append([]any{streams, []int64{0, 0}, ids, types, data, meta}, msg...)
}

// EnqueueTx in a transaction that wrote before it: a transaction that
// enqueued to the same key and committed meanwhile is younger, so by
// transaction id, the relay's order, this message would go first though it
// commits last. It is refused (ErrTransactionOrder, as an append is),
// nothing is enqueued and the transaction stays usable; the retried
// transaction's message goes after, in the order of commits.
func TestOutboxEnqueueTxAfterAWriteKeepsCommitOrder(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	write := func(tx pgx.Tx) {
		t.Helper()
		if _, err := store.AppendTx(ctx, tx, "audit-1", conduit.Any, mustEvent(t, "noted", 1)); err != nil {
			t.Fatal(err)
		}
	}
	older, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer older.Rollback(ctx) //nolint:errcheck
	write(older)              // older has its transaction id now
	if err := store.Enqueue(ctx, conduit.NewMessage("t", "k", []byte("younger"))); err != nil {
		t.Fatal(err)
	}
	err = store.EnqueueTx(ctx, older, conduit.NewMessage("t", "k", []byte("older")))
	var toe *conduit.TransactionOrderError
	if !errors.As(err, &toe) || toe.Key != "k" || !errors.Is(err, conduit.ErrTransactionOrder) || !conduit.IsRefused(err) {
		t.Fatalf("EnqueueTx after a younger transaction enqueued to the key = %v; want a *TransactionOrderError for key k", err)
	}
	var one int
	if err := older.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatalf("the transaction is not usable after the refusal: %v", err)
	}
	if err := older.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	err = store.InTx(ctx, func(tx pgx.Tx) error {
		write(tx)
		return store.EnqueueTx(ctx, tx, conduit.NewMessage("t", "k", []byte("older")))
	})
	if err != nil {
		t.Fatalf("the retried transaction: %v", err)
	}
	rec := &recorder{}
	drain(t, ctx, newRelay(t, store, rec, nil))
	if got := rec.payloads(""); !slices.Equal(got, []string{"younger", "older"}) {
		t.Fatalf("delivered %q; want younger, older", got)
	}
}

// AppendTx's rule messages go through the same check: refused, the events
// it wrote must not commit without them, so the transaction is aborted.
func TestOutboxAppendTxRuleMessageRefusedAbortsTransaction(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, &conduit.Config{Outbox: []conduit.OutboxRule{{EventType: "order_paid", Topic: "orders"}}})
	older, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer older.Rollback(ctx) //nolint:errcheck
	if _, err := store.AppendTx(ctx, older, "audit-2", conduit.Any, mustEvent(t, "noted", 1)); err != nil {
		t.Fatal(err)
	}
	// A younger transaction enqueues to the key the rule's message will
	// have: the stream's id.
	if err := store.Enqueue(ctx, conduit.NewMessage("orders", "order-5", []byte("younger"))); err != nil {
		t.Fatal(err)
	}
	_, err = store.AppendTx(ctx, older, "order-5", conduit.NoStream, mustEvent(t, "order_paid", 1))
	if !errors.Is(err, conduit.ErrTransactionOrder) {
		t.Fatalf("AppendTx whose rule message is refused = %v; want ErrTransactionOrder", err)
	}
	if err := older.Commit(ctx); err == nil {
		t.Fatal("the transaction committed the events without their message")
	}
	if n := countEvents(t, ctx, pool, "order-5"); n != 0 {
		t.Fatalf("%d events stored without their message", n)
	}
}
