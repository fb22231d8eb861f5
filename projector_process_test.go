package conduit_test

// A projector in a subprocess, for the tests that kill (SIGKILL) or pause
// (SIGSTOP) a projector process: the test binary re-executes itself to run
// TestProjectorHelperProcess with a helperSpec in the environment.
//
// The helper runs a faultProjection until SIGTERM. When it applies a deposit
// marked Stall (rows written, batch not committed) it prints
// "conduit-helper stall <event id>" and blocks until a line arrives on its
// stdin (or stdin closes), so the parent can kill or pause it exactly there.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

const (
	helperSpecEnv    = "CONDUIT_TEST_PROJECTOR_HELPER"
	helperLinePrefix = "conduit-helper"
)

// helperSpec tells the helper process what to run.
type helperSpec struct {
	URL            string
	Projection     string
	Instance       string
	BatchSize      int
	LeaseDuration  time.Duration
	HandlerTimeout time.Duration
	PollInterval   time.Duration
}

// TestProjectorHelperProcess is the subprocess side. Run as an ordinary test
// (no helperSpecEnv) it does nothing.
func TestProjectorHelperProcess(t *testing.T) {
	raw := os.Getenv(helperSpecEnv)
	if raw == "" {
		return
	}
	var spec helperSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		t.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()

	pcfg, err := pgxpool.ParseConfig(spec.URL)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.ConnConfig.RuntimeParams["application_name"] = helperLinePrefix + "-" + spec.Instance
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store, err := conduit.NewStore(pool, &conduit.Config{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()

	stdin := bufio.NewReader(os.Stdin)
	stalled := map[uuid.UUID]bool{}
	hook := func(_ context.Context, _ pgx.Tx, e conduit.Event) error {
		var d faultDepositData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return err
		}
		if !d.Stall || stalled[e.ID] {
			return nil
		}
		stalled[e.ID] = true
		fmt.Printf("%s stall %s\n", helperLinePrefix, e.ID)
		_, _ = stdin.ReadString('\n') // until the parent lets us go on
		return nil
	}
	p, err := conduit.NewProjector(store, &faultProjection{name: spec.Projection, by: spec.Instance, hook: hook},
		&conduit.ProjectorConfig{
			BatchSize: spec.BatchSize, LeaseDuration: spec.LeaseDuration, HandlerTimeout: spec.HandlerTimeout,
			PollInterval: spec.PollInterval, RetryBackoff: 20 * time.Millisecond, InstanceID: spec.Instance,
		})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("%s started %s\n", helperLinePrefix, spec.Instance)
	if err := p.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// helperProc is a running helper process.
type helperProc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string   // "kind arg", without the prefix; closed at EOF
	ready  chan struct{} // closed at the "started" line: SIGTERM is handled from then on
	done   chan struct{}
	err    error // cmd.Wait's, once done is closed
	stderr syncBuffer
}

// startHelper starts a helper process running spec; it is killed at the
// test's end if still running, and its log shown if the test failed.
func startHelper(t testing.TB, spec helperSpec) *helperProc {
	t.Helper()
	raw, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	h := &helperProc{name: spec.Instance, lines: make(chan string, 1000), ready: make(chan struct{}), done: make(chan struct{})}
	h.cmd = exec.Command(exe, "-test.run=^TestProjectorHelperProcess$", "-test.count=1", "-test.timeout=3m")
	h.cmd.Env = append(os.Environ(), helperSpecEnv+"="+string(raw))
	h.cmd.Stderr = &h.stderr
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		started := false
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), helperLinePrefix+" "); ok {
				if !started && strings.HasPrefix(line, "started ") {
					started = true
					close(h.ready)
				}
				select {
				case h.lines <- line:
				default: // nobody listens; drop
				}
			}
		}
		close(h.lines)
		h.err = h.cmd.Wait() // after the last read from stdout
		close(h.done)
	}()
	t.Cleanup(func() {
		h.kill(t)
		if t.Failed() {
			log := h.stderr.String()
			if len(log) > 16000 {
				log = "…" + log[len(log)-16000:]
			}
			t.Logf("helper %s (pid %d) log:\n%s", h.name, h.cmd.Process.Pid, log)
		}
	})
	return h
}

// expect waits for the helper to print a line of the given kind and returns
// its argument.
func (h *helperProc) expect(t testing.TB, kind string) string {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case line, ok := <-h.lines:
			if !ok {
				<-h.done
				t.Fatalf("helper %s exited (%v) before printing %q", h.name, h.err, kind)
			}
			if k, arg, _ := strings.Cut(line, " "); k == kind {
				return arg
			}
		case <-timeout:
			t.Fatalf("helper %s did not print %q", h.name, kind)
		}
	}
}

// stallLine is a helper's report that it stalled on an event.
type stallLine struct {
	instance string
	event    string
}

// forwardStalls sends the helper's stall lines to ch.
func (h *helperProc) forwardStalls(ch chan<- stallLine) {
	go func() {
		for line := range h.lines {
			if k, arg, _ := strings.Cut(line, " "); k == "stall" {
				ch <- stallLine{instance: h.name, event: arg}
			}
		}
	}()
}

// expectStall waits for an instance other than not to stall on event.
func expectStall(t testing.TB, ch <-chan stallLine, event uuid.UUID, not string) stallLine {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case s := <-ch:
			if s.event == event.String() && s.instance != not {
				return s
			}
			t.Logf("ignoring stall of %s on %s", s.instance, s.event)
		case <-timeout:
			t.Fatalf("no instance (other than %q) stalled on event %s", not, event)
		}
	}
}

// signal sends sig to the helper.
func (h *helperProc) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := h.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to helper %s: %v", sig, h.name, err)
	}
}

// resume lets a stalled helper go on.
func (h *helperProc) resume(t testing.TB) {
	t.Helper()
	if _, err := io.WriteString(h.stdin, "\n"); err != nil {
		t.Fatalf("resume helper %s: %v", h.name, err)
	}
}

// kill kills the helper (SIGKILL) and waits for it to exit.
func (h *helperProc) kill(t testing.TB) {
	t.Helper()
	select {
	case <-h.done:
		return
	default:
	}
	_ = h.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-h.done:
	case <-time.After(30 * time.Second):
		t.Errorf("helper %s (pid %d) survived SIGKILL", h.name, h.cmd.Process.Pid)
	}
}

// stop stops the helper gracefully (SIGTERM) and fails the test unless it
// exits cleanly.
func (h *helperProc) stop(t testing.TB) {
	t.Helper()
	_ = h.stdin.Close()
	select { // a helper just started may not handle SIGTERM yet
	case <-h.ready:
	case <-h.done:
	case <-time.After(60 * time.Second):
		t.Errorf("helper %s did not start", h.name)
	}
	h.signal(t, syscall.SIGTERM)
	select {
	case <-h.done:
		if h.err != nil {
			t.Errorf("helper %s exited: %v", h.name, h.err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("helper %s did not stop on SIGTERM", h.name)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
