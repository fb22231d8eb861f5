package natstest

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeServer listens on a free port and greets each connection with
// greeting; it returns the URL.
func fakeServer(t *testing.T, greeting string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(greeting))
			c.Close()
		}
	}()
	return "nats://" + l.Addr().String()
}

func TestProbe(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, url, wantErr string
	}{
		{"jetstream", fakeServer(t, `INFO {"server_id":"x","jetstream":true}`+"\r\n"), ""},
		{"no jetstream", fakeServer(t, `INFO {"server_id":"x"}`+"\r\n"), "without JetStream"},
		{"not nats", fakeServer(t, "SSH-2.0-OpenSSH\r\n"), "not a NATS server"},
		{"silent", fakeServer(t, ""), "read INFO"},
		{"bad url", "nats://[::1", "parse URL"},
	} {
		err := probe(c.url)
		switch {
		case c.wantErr == "" && err != nil:
			t.Errorf("%s: probe(%s) = %v; want nil", c.name, c.url, err)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("%s: probe(%s) = %v; want an error containing %q", c.name, c.url, err, c.wantErr)
		}
	}
}

func TestProbeNothingListening(t *testing.T) {
	t.Parallel()
	port := freePort(t) // nothing listens there any more
	if err := probe("nats://127.0.0.1:" + strconv.Itoa(port)); err == nil {
		t.Fatal("probe of a port nothing listens on succeeded")
	}
}

// A private server stopped and started again keeps its port and its
// streams, and a connection made with Connect reconnects by itself.
func TestProcessStopStart(t *testing.T) {
	t.Parallel()
	p := StartProcess(t)
	url := p.URL()
	nc := Connect(t, url)
	js := NewJetStream(t, nc)
	stream := NewStream(t, js, jetstream.StreamConfig{Storage: jetstream.FileStorage})
	name := stream.CachedInfo().Config.Name
	if _, err := js.Publish(t.Context(), name+".a", []byte("before")); err != nil {
		t.Fatalf("publish: %v", err)
	}

	p.Stop()
	if p.Running() {
		t.Fatal("Running after Stop")
	}
	if err := probe(url); err == nil {
		t.Fatal("the server still answers after Stop")
	}
	p.Start()
	if p.URL() != url {
		t.Fatalf("URL after Start = %s; want %s", p.URL(), url)
	}

	deadline := time.Now().Add(10 * time.Second)
	for nc.Status() != nats.CONNECTED {
		if time.Now().After(deadline) {
			t.Fatalf("the connection has not reconnected: %s", nc.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
	var err error
	for {
		_, err = js.Publish(t.Context(), name+".a", []byte("after"))
		if err == nil || !errors.Is(err, jetstream.ErrNoStreamResponse) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond) // JetStream is still recovering the stream
	}
	if err != nil {
		t.Fatalf("publish after Start: %v", err)
	}
	msgs := ReadAll(t, stream)
	if len(msgs) != 2 || string(msgs[0].Data()) != "before" || string(msgs[1].Data()) != "after" {
		t.Fatalf("the stream holds %d messages; want before and after", len(msgs))
	}
}
