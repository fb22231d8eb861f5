package conduitnats_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/conduitnats"
	"github.com/conduit-es/conduit/conduitnats/internal/natstest"
)

// newPublisher returns a Publisher on js with cfg, or fails the test.
func newPublisher(t *testing.T, js jetstream.JetStream, cfg *conduitnats.Config) *conduitnats.Publisher {
	t.Helper()
	p, err := conduitnats.NewPublisher(js, cfg)
	if err != nil {
		t.Fatalf("NewPublisher: %v", err)
	}
	return p
}

// messages returns n messages for topics prefix.0, prefix.1, ..., keyed
// by key, with payload "payload i".
func messages(prefix, key string, n int) []conduit.Message {
	msgs := make([]conduit.Message, n)
	for i := range msgs {
		msgs[i] = conduit.NewMessage(prefix+"."+strconv.Itoa(i), key, []byte("payload "+strconv.Itoa(i)))
	}
	return msgs
}

// publishError returns err as a *PublishError, or fails the test.
func publishError(t *testing.T, err error) *conduitnats.PublishError {
	t.Helper()
	var pe *conduitnats.PublishError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T) is not a *conduitnats.PublishError", err, err)
	}
	return pe
}

// storedIDs returns the Nats-Msg-Id of every message in stream, in order.
func storedIDs(t *testing.T, stream jetstream.Stream) []string {
	t.Helper()
	var ids []string
	for _, m := range natstest.ReadAll(t, stream) {
		ids = append(ids, m.Headers().Get(jetstream.MsgIDHeader))
	}
	return ids
}

// ids returns the IDs of msgs as text.
func ids(msgs []conduit.Message) []string {
	s := make([]string, len(msgs))
	for i, m := range msgs {
		s[i] = m.ID.String()
	}
	return s
}

// silentSubject subscribes to a subject of its own with core NATS, and
// never answers: a JetStream publish there is received but never
// acknowledged. It returns the subject and the count of messages
// received.
func silentSubject(t *testing.T, nc *nats.Conn) (string, *atomic.Int64) {
	t.Helper()
	subject := natstest.UniqueName(t) + ".silent"
	var received atomic.Int64
	sub, err := nc.Subscribe(subject, func(*nats.Msg) { received.Add(1) })
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush: %v", err)
	}
	return subject, &received
}

// waitFor polls cond every 5 ms until it holds, or fails the test after
// timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: still waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPublishBatchReadBack(t *testing.T) {
	t.Parallel()
	js := natstest.JetStream(t)
	stream := natstest.NewStream(t, js, jetstream.StreamConfig{})
	name := stream.CachedInfo().Config.Name

	// More messages than MaxInFlight, so the bound is reached over and
	// over; keys of two orders interleaved, one message with no key, and
	// topics that change every three messages.
	msgs := messages(name+".orders", "", 50)
	for i := range msgs {
		if i/3%2 == 1 {
			msgs[i].Topic = name + ".payments"
		}
		msgs[i].Key = "order-" + strconv.Itoa(i%2)
		msgs[i].Headers = map[string]string{"Content-Type": "text/plain", "Index": strconv.Itoa(i)}
	}
	msgs[7].Key = ""
	p := newPublisher(t, js, &conduitnats.Config{MaxInFlight: 4})
	n, err := p.Publish(t.Context(), msgs)
	if n != len(msgs) || err != nil {
		t.Fatalf("Publish = %d, %v; want %d, nil", n, err, len(msgs))
	}

	got := natstest.ReadAll(t, stream)
	if len(got) != len(msgs) {
		t.Fatalf("the stream holds %d messages; want %d", len(got), len(msgs))
	}
	for i, g := range got {
		want := msgs[i]
		if g.Subject() != want.Topic {
			t.Errorf("message %d: subject %q; want %q", i, g.Subject(), want.Topic)
		}
		if string(g.Data()) != string(want.Payload) {
			t.Errorf("message %d: payload %q; want %q", i, g.Data(), want.Payload)
		}
		h := g.Headers()
		if id := h.Get(jetstream.MsgIDHeader); id != want.ID.String() {
			t.Errorf("message %d: Nats-Msg-Id %q; want %q", i, id, want.ID)
		}
		for k, v := range want.Headers {
			if h.Get(k) != v {
				t.Errorf("message %d: header %s = %q; want %q", i, k, h.Get(k), v)
			}
		}
		if want.Key == "" {
			if vs, ok := h[conduitnats.KeyHeader]; ok {
				t.Errorf("message %d has no key but a %s header %q", i, conduitnats.KeyHeader, vs)
			}
		} else if k := h.Get(conduitnats.KeyHeader); k != want.Key {
			t.Errorf("message %d: %s %q; want %q", i, conduitnats.KeyHeader, k, want.Key)
		}
	}
}

func TestPublishSubjectPrefix(t *testing.T) {
	t.Parallel()
	js := natstest.JetStream(t)
	stream := natstest.NewStream(t, js, jetstream.StreamConfig{})
	name := stream.CachedInfo().Config.Name

	p := newPublisher(t, js, &conduitnats.Config{SubjectPrefix: name + "."})
	m := conduit.NewMessage("orders.placed", "order-1", []byte("{}"))
	if n, err := p.Publish(t.Context(), []conduit.Message{m}); n != 1 || err != nil {
		t.Fatalf("Publish = %d, %v; want 1, nil", n, err)
	}
	got := natstest.ReadAll(t, stream)
	if len(got) != 1 || got[0].Subject() != name+".orders.placed" {
		t.Fatalf("stored %d messages (first subject %q); want one to %q", len(got), subjectOf(got), name+".orders.placed")
	}
}

func subjectOf(msgs []jetstream.Msg) string {
	if len(msgs) == 0 {
		return ""
	}
	return msgs[0].Subject()
}

// The key and the ID win over headers of the same names; other NATS
// headers, such as JetStream's expectations, go as they are.
func TestPublishReservedHeaders(t *testing.T) {
	t.Parallel()
	js := natstest.JetStream(t)
	stream := natstest.NewStream(t, js, jetstream.StreamConfig{})
	name := stream.CachedInfo().Config.Name
	p := newPublisher(t, js, nil)

	m := conduit.NewMessage(name+".t", "the-key", nil)
	m.Headers = map[string]string{
		conduitnats.KeyHeader:          "forged",
		jetstream.MsgIDHeader:          "forged",
		jetstream.ExpectedStreamHeader: name,
	}
	if n, err := p.Publish(t.Context(), []conduit.Message{m}); n != 1 || err != nil {
		t.Fatalf("Publish = %d, %v; want 1, nil", n, err)
	}
	got := natstest.ReadAll(t, stream)
	if len(got) != 1 {
		t.Fatalf("the stream holds %d messages; want 1", len(got))
	}
	h := got[0].Headers()
	if h.Get(conduitnats.KeyHeader) != "the-key" || h.Get(jetstream.MsgIDHeader) != m.ID.String() {
		t.Errorf("headers %v; want %s the-key and %s %s", h, conduitnats.KeyHeader, jetstream.MsgIDHeader, m.ID)
	}

	// The expectation is JetStream's to check: a wrong stream is refused.
	m = conduit.NewMessage(name+".t", "the-key", nil)
	m.Headers = map[string]string{jetstream.ExpectedStreamHeader: "ANOTHER"}
	n, err := p.Publish(t.Context(), []conduit.Message{m})
	var apiErr *jetstream.APIError
	if n != 0 || !errors.As(err, &apiErr) {
		t.Fatalf("Publish with a wrong expected stream = %d, %v; want 0 and a *jetstream.APIError", n, err)
	}
	if pe := publishError(t, err); pe.OutcomeUnknown {
		t.Errorf("a message JetStream refused has OutcomeUnknown: %+v", pe)
	}
}

// A relay that lost an acknowledgement publishes the same messages again:
// JetStream keeps one copy of each.
func TestPublishDeduplicates(t *testing.T) {
	t.Parallel()
	js := natstest.JetStream(t)
	stream := natstest.NewStream(t, js, jetstream.StreamConfig{Duplicates: time.Minute})
	name := stream.CachedInfo().Config.Name
	p := newPublisher(t, js, nil)

	msgs := messages(name+".t", "k", 5)
	if n, err := p.Publish(t.Context(), msgs[:1]); n != 1 || err != nil {
		t.Fatalf("first Publish = %d, %v; want 1, nil", n, err)
	}
	// The redelivery: the first message again, with the rest of the batch.
	for range 2 {
		if n, err := p.Publish(t.Context(), msgs); n != len(msgs) || err != nil {
			t.Fatalf("Publish again = %d, %v; want %d, nil", n, err, len(msgs))
		}
	}
	if got := storedIDs(t, stream); !slices.Equal(got, ids(msgs)) {
		t.Fatalf("stored IDs %v; want each message once, in order: %v", got, ids(msgs))
	}
}

// Message k has a subject no stream binds: Publish returns k and the
// refusal, and the messages before k are stored, in order.
func TestPublishStopsAtRefusedMessage(t *testing.T) {
	t.Parallel()
	for _, maxInFlight := range []int{1, 3, 0} {
		t.Run("MaxInFlight="+strconv.Itoa(maxInFlight), func(t *testing.T) {
			t.Parallel()
			js := natstest.JetStream(t)
			stream := natstest.NewStream(t, js, jetstream.StreamConfig{})
			name := stream.CachedInfo().Config.Name
			p := newPublisher(t, js, &conduitnats.Config{MaxInFlight: maxInFlight})

			const k = 2
			msgs := messages(name+".t", "k", 6)
			msgs[k].Topic = natstest.UniqueName(t) + ".unbound"
			n, err := p.Publish(t.Context(), msgs)
			if n != k {
				t.Fatalf("Publish = %d, %v; want %d and an error", n, err, k)
			}
			pe := publishError(t, err)
			if pe.Index != k || pe.ID != msgs[k].ID || pe.Subject != msgs[k].Topic || pe.OutcomeUnknown {
				t.Errorf("PublishError = %+v; want index %d, id %s, subject %q, not OutcomeUnknown",
					pe, k, msgs[k].ID, msgs[k].Topic)
			}
			if !errors.Is(err, jetstream.ErrNoStreamResponse) {
				t.Errorf("error %v is not jetstream.ErrNoStreamResponse", err)
			}

			// Message k+m (m = MaxInFlight) is sent only once k is
			// acknowledged: the ones between went out before k's refusal
			// came back, and are stored ahead of k. This is the order
			// caveat of the package doc; MaxInFlight 1 has none.
			m := maxInFlight
			if m == 0 {
				m = conduitnats.MaxInFlightDefault
			}
			want := append(ids(msgs[:k]), ids(msgs[k+1:min(len(msgs), k+m)])...)
			got := storedIDs(t, stream)
			if !slices.Equal(got, want) {
				t.Fatalf("stored IDs %v; want %v", got, want)
			}
		})
	}
}

// A message that cannot be sent stops the batch: nothing after it is sent.
func TestPublishStopsSendingAtInvalidMessage(t *testing.T) {
	t.Parallel()
	js := natstest.JetStream(t)
	stream := natstest.NewStream(t, js, jetstream.StreamConfig{})
	name := stream.CachedInfo().Config.Name
	p := newPublisher(t, js, nil)

	cases := []struct {
		name    string
		spoil   func(m *conduit.Message)
		wantErr error
	}{
		{"space in topic", func(m *conduit.Message) { m.Topic += " x" }, conduitnats.ErrInvalidSubject},
		{"empty token", func(m *conduit.Message) { m.Topic += "..x" }, conduitnats.ErrInvalidSubject},
		{"wildcard", func(m *conduit.Message) { m.Topic += ".>" }, conduitnats.ErrInvalidSubject},
		{"empty topic", func(m *conduit.Message) { m.Topic = "" }, conduitnats.ErrInvalidSubject},
		{"zero id", func(m *conduit.Message) { m.ID = uuid.Nil }, conduitnats.ErrNoMessageID},
		{"header name", func(m *conduit.Message) { m.Headers = map[string]string{"a:b": "c"} }, conduitnats.ErrInvalidHeader},
		{"header value", func(m *conduit.Message) { m.Headers = map[string]string{"a": "b\r\nc: d"} }, conduitnats.ErrInvalidHeader},
	}
	var want []string
	for _, c := range cases {
		msgs := messages(name+".t", "k", 4)
		c.spoil(&msgs[2])
		n, err := p.Publish(t.Context(), msgs)
		if n != 2 || !errors.Is(err, c.wantErr) {
			t.Fatalf("%s: Publish = %d, %v; want 2, %v", c.name, n, err, c.wantErr)
		}
		if pe := publishError(t, err); pe.Index != 2 || pe.OutcomeUnknown {
			t.Errorf("%s: PublishError = %+v; want index 2, not OutcomeUnknown", c.name, pe)
		}
		want = append(want, ids(msgs[:2])...)
	}
	if got := storedIDs(t, stream); !slices.Equal(got, want) {
		t.Fatalf("stored IDs %v; want only the two messages before each invalid one: %v", got, want)
	}
}

func TestPublishEmptyBatch(t *testing.T) {
	t.Parallel()
	js := natstest.JetStream(t)
	p := newPublisher(t, js, nil)
	if n, err := p.Publish(t.Context(), nil); n != 0 || err != nil {
		t.Fatalf("Publish(nil) = %d, %v; want 0, nil", n, err)
	}
}

func TestPublishContextCancelled(t *testing.T) {
	t.Parallel()
	js := natstest.JetStream(t)
	stream := natstest.NewStream(t, js, jetstream.StreamConfig{})
	name := stream.CachedInfo().Config.Name
	p := newPublisher(t, js, nil)

	t.Run("before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		n, err := p.Publish(ctx, messages(name+".before", "k", 3))
		if n != 0 || !errors.Is(err, context.Canceled) {
			t.Fatalf("Publish = %d, %v; want 0, context.Canceled", n, err)
		}
		if pe := publishError(t, err); pe.OutcomeUnknown {
			t.Errorf("a message never sent has OutcomeUnknown")
		}
	})

	t.Run("awaiting acknowledgement", func(t *testing.T) {
		// One at a time, so that message 1 reaching the subscriber means
		// message 0 was acknowledged.
		p := newPublisher(t, js, &conduitnats.Config{MaxInFlight: 1})
		silent, received := silentSubject(t, js.Conn())
		msgs := messages(name+".awaiting", "k", 3)
		msgs[1].Topic = silent

		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		type result struct {
			n   int
			err error
		}
		done := make(chan result, 1)
		go func() {
			n, err := p.Publish(ctx, msgs)
			done <- result{n, err}
		}()
		waitFor(t, 5*time.Second, "the silent subscriber to receive message 1", func() bool { return received.Load() == 1 })
		cancel()
		var r result
		select {
		case r = <-done:
		case <-time.After(time.Second):
			t.Fatal("Publish still runs a second after its ctx was cancelled")
		}
		if r.n != 1 || !errors.Is(r.err, context.Canceled) {
			t.Fatalf("Publish = %d, %v; want 1, context.Canceled", r.n, r.err)
		}
		if pe := publishError(t, r.err); pe.Index != 1 || !pe.OutcomeUnknown {
			t.Errorf("PublishError = %+v; want index 1, OutcomeUnknown", pe)
		}
	})
}

// Acknowledgements that do not come end Publish after AckTimeout, with
// MaxInFlight messages sent and no more.
func TestPublishAckTimeoutAndMaxInFlight(t *testing.T) {
	t.Parallel()
	js := natstest.JetStream(t)
	silent, received := silentSubject(t, js.Conn())
	const timeout = 300 * time.Millisecond
	p := newPublisher(t, js, &conduitnats.Config{MaxInFlight: 3, AckTimeout: timeout})

	msgs := make([]conduit.Message, 10)
	for i := range msgs {
		msgs[i] = conduit.NewMessage(silent, "k", nil)
	}
	start := time.Now()
	n, err := p.Publish(t.Context(), msgs)
	elapsed := time.Since(start)
	if n != 0 || !errors.Is(err, conduitnats.ErrAckTimeout) {
		t.Fatalf("Publish = %d, %v; want 0, ErrAckTimeout", n, err)
	}
	if pe := publishError(t, err); pe.Index != 0 || !pe.OutcomeUnknown {
		t.Errorf("PublishError = %+v; want index 0, OutcomeUnknown", pe)
	}
	if elapsed < timeout || elapsed > timeout+2*time.Second {
		t.Errorf("Publish returned after %s; want about %s", elapsed, timeout)
	}
	// All three were sent before Publish began to wait; none after.
	waitFor(t, 5*time.Second, "3 messages at the silent subscriber", func() bool { return received.Load() >= 3 })
	if err := js.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	if got := received.Load(); got != 3 {
		t.Fatalf("the subscriber received %d messages; want MaxInFlight = 3", got)
	}
}

func TestNewPublisherConfig(t *testing.T) {
	t.Parallel()
	js := natstest.JetStream(t)
	if p, err := conduitnats.NewPublisher(nil, nil); err == nil {
		t.Errorf("NewPublisher(nil, nil) = %v, nil; want an error", p)
	}
	for _, c := range []struct {
		cfg   conduitnats.Config
		field string
	}{
		{conduitnats.Config{MaxInFlight: -1}, "conduitnats.Config.MaxInFlight"},
		{conduitnats.Config{AckTimeout: -time.Second}, "conduitnats.Config.AckTimeout"},
		{conduitnats.Config{SubjectPrefix: "a b."}, "conduitnats.Config.SubjectPrefix"},
	} {
		_, err := conduitnats.NewPublisher(js, &c.cfg)
		var ce *conduit.ConfigError
		if !errors.As(err, &ce) || ce.Field != c.field || !errors.Is(err, conduit.ErrInvalidConfig) {
			t.Errorf("NewPublisher(%+v) = %v; want a *conduit.ConfigError for %s", c.cfg, err, c.field)
		}
	}
	if _, err := conduitnats.NewPublisher(js, &conduitnats.Config{}); err != nil {
		t.Errorf("NewPublisher with the zero Config: %v", err)
	}
}

// The server stops: Publish fails promptly, and after the server is back
// the same messages go through, each stored once.
func TestPublishServerStoppedAndBack(t *testing.T) {
	t.Parallel()
	server := natstest.StartProcess(t)
	nc := natstest.Connect(t, server.URL())
	js := natstest.NewJetStream(t, nc)
	stream := natstest.NewStream(t, js, jetstream.StreamConfig{Storage: jetstream.FileStorage, Duplicates: time.Minute})
	name := stream.CachedInfo().Config.Name
	const timeout = 3 * time.Second
	p := newPublisher(t, js, &conduitnats.Config{AckTimeout: timeout})

	before := messages(name+".before", "k", 3)
	if n, err := p.Publish(t.Context(), before); n != len(before) || err != nil {
		t.Fatalf("Publish before the stop = %d, %v", n, err)
	}

	server.Stop()
	during := messages(name+".during", "k", 3)
	// Whether or not the connection has noticed yet, Publish fails within
	// the timeout.
	start := time.Now()
	n, err := p.Publish(t.Context(), during)
	if n != 0 || err == nil {
		t.Fatalf("Publish right after the stop = %d, %v; want 0 and an error", n, err)
	}
	if elapsed := time.Since(start); elapsed > timeout+time.Second {
		t.Errorf("Publish right after the stop took %s; want at most about AckTimeout (%s)", elapsed, timeout)
	}
	// Once it has noticed, Publish fails at once without sending.
	waitFor(t, 5*time.Second, "the connection to notice the stop", func() bool { return nc.Status() != nats.CONNECTED })
	start = time.Now()
	n, err = p.Publish(t.Context(), during)
	if n != 0 || !errors.Is(err, conduitnats.ErrNotConnected) {
		t.Fatalf("Publish while disconnected = %d, %v; want 0, ErrNotConnected", n, err)
	}
	if pe := publishError(t, err); pe.OutcomeUnknown {
		t.Errorf("a message not sent has OutcomeUnknown: %+v", pe)
	}
	if elapsed := time.Since(start); elapsed > 500*time.Millisecond {
		t.Errorf("Publish while disconnected took %s; want it to fail at once", elapsed)
	}

	server.Start()
	// The relay's retry: publish the batch again until it goes through
	// (the connection reconnects, and JetStream recovers the stream).
	deadline := time.Now().Add(15 * time.Second)
	for {
		n, err = p.Publish(t.Context(), during)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Publish after the restart still fails: %d, %v", n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n != len(during) {
		t.Fatalf("Publish after the restart = %d; want %d", n, len(during))
	}
	want := append(ids(before), ids(during)...)
	if got := storedIDs(t, stream); !slices.Equal(got, want) {
		t.Fatalf("stored IDs %v; want %v", got, want)
	}
}

// BenchmarkPublish publishes batches of 100 messages of one key, pipelined
// (the default MaxInFlight) and one at a time (MaxInFlight 1): the cost of
// strict order.
func BenchmarkPublish(b *testing.B) {
	for _, maxInFlight := range []int{0, 1} {
		b.Run("MaxInFlight="+strconv.Itoa(maxInFlight), func(b *testing.B) {
			js := natstest.JetStream(b)
			stream := natstest.NewStream(b, js, jetstream.StreamConfig{Storage: jetstream.MemoryStorage})
			name := stream.CachedInfo().Config.Name
			p, err := conduitnats.NewPublisher(js, &conduitnats.Config{MaxInFlight: maxInFlight})
			if err != nil {
				b.Fatal(err)
			}
			const batch = 100
			for b.Loop() {
				msgs := messages(name+".t", "k", batch)
				if n, err := p.Publish(b.Context(), msgs); n != batch || err != nil {
					b.Fatalf("Publish = %d, %v", n, err)
				}
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// Acknowledgements that never come stay among js's pending ones unless js
// has an async publish timeout: once WithPublishAsyncMaxPending of them
// pend, nothing more can be sent. With the timeout they expire, and
// publishing goes on (the advice of NewPublisher's doc).
func TestPublishAbandonedAcknowledgements(t *testing.T) {
	t.Parallel()
	for _, asyncTimeout := range []time.Duration{0, 100 * time.Millisecond} {
		t.Run("WithPublishAsyncTimeout="+asyncTimeout.String(), func(t *testing.T) {
			t.Parallel()
			nc := natstest.Connect(t, natstest.URL(t))
			js := natstest.NewJetStream(t, nc, jetstream.WithPublishAsyncMaxPending(4),
				jetstream.WithPublishAsyncTimeout(asyncTimeout)) // 0: none
			stream := natstest.NewStream(t, js, jetstream.StreamConfig{})
			name := stream.CachedInfo().Config.Name
			silent, _ := silentSubject(t, nc)
			p := newPublisher(t, js, &conduitnats.Config{AckTimeout: 300 * time.Millisecond})

			// Four messages whose acknowledgements never come fill js's
			// pending acknowledgements.
			lost := make([]conduit.Message, 4)
			for i := range lost {
				lost[i] = conduit.NewMessage(silent, "k", nil)
			}
			if n, err := p.Publish(t.Context(), lost); n != 0 || !errors.Is(err, conduitnats.ErrAckTimeout) &&
				!errors.Is(err, jetstream.ErrAsyncPublishTimeout) {
				t.Fatalf("Publish to the silent subject = %d, %v; want 0 and a timeout", n, err)
			}

			n, err := p.Publish(t.Context(), messages(name+".t", "k", 1))
			if asyncTimeout == 0 {
				if n != 0 || !errors.Is(err, jetstream.ErrTooManyStalledMsgs) || !errors.Is(err, conduitnats.ErrAckTimeout) {
					t.Fatalf("Publish with js's pending acknowledgements full = %d, %v; "+
						"want 0, ErrTooManyStalledMsgs after AckTimeout", n, err)
				}
				if pe := publishError(t, err); pe.OutcomeUnknown {
					t.Errorf("a message never sent has OutcomeUnknown: %+v", pe)
				}
				return
			}
			if n != 1 || err != nil {
				t.Fatalf("Publish after the async timeout = %d, %v; want 1, nil", n, err)
			}
		})
	}
}
