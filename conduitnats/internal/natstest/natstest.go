// Package natstest gives the tests of conduitnats (and of anything else in
// this module, such as the outbox relay's integration tests) a real NATS
// server with JetStream.
//
// Two kinds of server:
//
//   - The shared server: NATS_URL, else nats://127.0.0.1:4222 (the one
//     `.ci/run` starts). [URL] returns it; [JetStream] connects to it; tests
//     keep apart by using streams and subjects of their own ([NewStream],
//     [UniqueName]).
//   - A private server: [StartProcess] runs nats-server (from PATH, else
//     /usr/sbin/nats-server) on a free port with its own store directory,
//     for tests that stop the server and start it again
//     ([Process.Stop], [Process.Start]).
//
// Without a server (nothing answers at the shared URL, or no nats-server
// binary for a private one) a test is skipped, except when CI=true, where
// it fails: CI must never count a test that did not run.
//
// The helpers call t.Fatal, so call them from the test's goroutine.
// Everything they create is released when the test ends: connections
// closed, streams deleted, private servers killed.
package natstest

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultURL is the shared server's URL when NATS_URL is not set.
const DefaultURL = "nats://127.0.0.1:4222"

// probeTimeout bounds the check that a server answers with JetStream.
const probeTimeout = 2 * time.Second

var (
	serverOnce sync.Once
	serverURL  string
	serverErr  error
)

// Server finds the shared server once per process: NATS_URL, else
// DefaultURL, if it answers within two seconds with JetStream enabled. It
// returns the URL, or why there is none. For code without a testing.TB
// (runnable examples); tests call URL.
func Server() (string, error) {
	serverOnce.Do(func() {
		serverURL = os.Getenv("NATS_URL")
		if serverURL == "" {
			serverURL = DefaultURL
		}
		serverErr = probe(serverURL)
	})
	return serverURL, serverErr
}

// URL returns the shared server's URL, or skips the test when there is
// none (fails it when CI=true).
func URL(t testing.TB) string {
	t.Helper()
	u, err := Server()
	if err != nil {
		unavailable(t, fmt.Sprintf("no NATS server with JetStream at %s (set NATS_URL): %v", u, err))
	}
	return u
}

// unavailable skips t, or fails it when CI=true.
func unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal("natstest: " + why)
	}
	t.Skip("natstest: " + why)
}

// probe returns nil if a NATS server with JetStream answers at rawURL: it
// reads the INFO line the server sends to a new connection.
func probe(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("parse URL: %w", err)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "4222")
	}
	conn, err := net.DialTimeout("tcp", host, probeTimeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetReadDeadline(time.Now().Add(probeTimeout)); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read INFO from %s: %w", host, err)
	}
	if !strings.HasPrefix(line, "INFO ") {
		return fmt.Errorf("%s is not a NATS server: it said %q", host, line)
	}
	if !strings.Contains(line, `"jetstream":true`) {
		return fmt.Errorf("the NATS server at %s runs without JetStream (start it with -js)", host)
	}
	return nil
}

// Connect connects to the server at serverURL with options suited to
// tests, then opts: reconnect forever, every 20 ms (so a test that
// restarts a private server does not wait long). The connection is closed
// when the test ends.
func Connect(t testing.TB, serverURL string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	base := []nats.Option{
		nats.Name(t.Name()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(20 * time.Millisecond),
		nats.ReconnectJitter(0, 0),
	}
	nc, err := nats.Connect(serverURL, append(base, opts...)...)
	if err != nil {
		t.Fatalf("natstest: connect to %s: %v", serverURL, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream (NewJetStream) on a new connection
// (Connect, with opts) to the shared server (URL), or skips the test when
// there is none (fails it when CI=true). Its connection is js.Conn().
func JetStream(t testing.TB, opts ...nats.Option) jetstream.JetStream {
	t.Helper()
	return NewJetStream(t, Connect(t, URL(t), opts...))
}

// AsyncPublishTimeout is the jetstream.WithPublishAsyncTimeout of
// NewJetStream: acknowledgements that never come expire, as conduitnats
// advises.
const AsyncPublishTimeout = 5 * time.Second

// NewJetStream returns a JetStream on nc made with
// jetstream.WithPublishAsyncTimeout(AsyncPublishTimeout), then opts.
func NewJetStream(t testing.TB, nc *nats.Conn, opts ...jetstream.JetStreamOpt) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc, append([]jetstream.JetStreamOpt{jetstream.WithPublishAsyncTimeout(AsyncPublishTimeout)}, opts...)...)
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	return js
}

// UniqueName returns a name no other test uses: "T_", the test's name
// reduced to letters, digits and underscores (at most 40 of them), "_" and
// 12 random hex digits. It is a valid stream name and subject token.
func UniqueName(t testing.TB) string {
	t.Helper()
	name := []rune(strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, t.Name()))
	if len(name) > 40 {
		name = name[:40]
	}
	return "T_" + string(name) + "_" + randomHex(6)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// NewStream creates a stream from cfg and deletes it when the test ends.
// An empty cfg.Name becomes UniqueName(t); empty cfg.Subjects become
// [cfg.Name + ".>"], so the stream binds every subject under its name.
func NewStream(t testing.TB, js jetstream.JetStream, cfg jetstream.StreamConfig) jetstream.Stream {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = UniqueName(t)
	}
	if len(cfg.Subjects) == 0 {
		cfg.Subjects = []string{cfg.Name + ".>"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := js.CreateStream(ctx, cfg)
	for try := 1; try < 10 && isStoreCreateError(err); try++ {
		// The server could not make the stream's store directory: seen when
		// the account's store directory went away as another test deleted
		// the last stream at the same moment. It is made again by a later
		// create.
		time.Sleep(time.Duration(try) * 20 * time.Millisecond)
		stream, err = js.CreateStream(ctx, cfg)
	}
	if err != nil {
		t.Fatalf("natstest: create stream %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// A test that closed the connection or stopped its server has
		// nothing left to delete; the stream goes with the store.
		if js.Conn().IsClosed() {
			return
		}
		if err := js.DeleteStream(ctx, cfg.Name); err != nil {
			t.Errorf("natstest: delete stream %s: %v", cfg.Name, err)
		}
	})
	return stream
}

// isStoreCreateError reports JetStream's "error creating store for stream"
// (API error code 10049).
func isStoreCreateError(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == 10049
}

// ReadAll reads every message of stream, in order, with an ordered
// consumer; it fails the test unless the stream's messages arrive within
// ten seconds.
func ReadAll(t testing.TB, stream jetstream.Stream) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("natstest: stream info: %v", err)
	}
	want := int(info.State.Msgs)
	if want == 0 {
		return nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("natstest: ordered consumer on %s: %v", info.Config.Name, err)
	}
	msgs := make([]jetstream.Msg, 0, want)
	for len(msgs) < want {
		batch, err := cons.Fetch(want-len(msgs), jetstream.FetchContext(ctx))
		if err != nil {
			t.Fatalf("natstest: fetch from %s: %v", info.Config.Name, err)
		}
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if err := batch.Error(); err != nil {
			t.Fatalf("natstest: fetch from %s (%d of %d messages read): %v", info.Config.Name, len(msgs), want, err)
		}
	}
	return msgs
}
