package natstest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// DebianBinary is where the Debian package nats-server installs the
// server; StartProcess looks there when nats-server is not in PATH.
const DebianBinary = "/usr/sbin/nats-server"

// startTimeout bounds how long Start waits for the server to answer, and
// Stop for it to exit before killing it.
const startTimeout = 15 * time.Second

// Process is a private nats-server with JetStream, run by one test on its
// own port and store directory, that the test can stop and start again.
// Its methods must be called from the test's goroutine.
type Process struct {
	t        testing.TB
	bin      string
	port     int
	storeDir string
	logFile  string
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has exited
	exitErr  error         // cmd.Wait's error, set before exited is closed
}

// StartProcess starts a private nats-server: nats-server -a 127.0.0.1 -js
// -p <a free port> -sd <a directory of t.TempDir()>, logging to a file
// beside it, and returns once it answers with JetStream. Without a
// nats-server binary (in PATH, else DebianBinary) the test is skipped, or
// fails when CI=true. The server is killed when the test ends.
func StartProcess(t testing.TB) *Process {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if _, statErr := os.Stat(DebianBinary); statErr != nil {
			unavailable(t, fmt.Sprintf("no nats-server binary in PATH or at %s: %v", DebianBinary, err))
		}
		bin = DebianBinary
	}
	dir := t.TempDir() // before the Cleanup below, so it is removed after the kill
	p := &Process{
		t:        t,
		bin:      bin,
		port:     freePort(t),
		storeDir: filepath.Join(dir, "store"),
		logFile:  filepath.Join(dir, "nats-server.log"),
	}
	t.Cleanup(p.kill)
	p.Start()
	return p
}

// freePort returns a TCP port on 127.0.0.1 that nothing listened on a
// moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// URL returns the server's client URL, the same across Stop and Start.
func (p *Process) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(p.port) }

// StoreDir returns the server's JetStream store directory, kept across
// Stop and Start, so streams and their messages survive a restart.
func (p *Process) StoreDir() string { return p.storeDir }

// LogFile returns the file the server logs to (every run appends to it).
func (p *Process) LogFile() string { return p.logFile }

// Running reports whether the server process is running.
func (p *Process) Running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Start starts the server again on the same port with the same store
// directory, after Stop; it returns once the server answers with
// JetStream, or fails the test. Connections made with nats.MaxReconnects
// (Connect's) reconnect by themselves.
func (p *Process) Start() {
	p.t.Helper()
	if p.Running() {
		p.t.Fatal("natstest: Start: the server is running")
	}
	cmd := exec.Command(p.bin, "-a", "127.0.0.1", "-p", strconv.Itoa(p.port), "-js", "-sd", p.storeDir,
		"-l", p.logFile)
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("natstest: start %s: %v", p.bin, err)
	}
	p.cmd, p.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) {
		p.exitErr = cmd.Wait()
		close(exited)
	}(p.exited)

	deadline := time.Now().Add(startTimeout)
	for {
		err := probe(p.URL())
		if err == nil {
			return
		}
		select {
		case <-p.exited:
			p.t.Fatalf("natstest: nats-server exited while starting (%v); log:\n%s", p.exitErr, p.logTail())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("natstest: nats-server on port %d does not answer after %s: %v; log:\n%s",
				p.port, startTimeout, err, p.logTail())
		}
	}
}

// Stop stops the server (SIGTERM: it closes its client connections and
// exits; SIGKILL if it has not within 15 seconds) and returns once it has
// exited. Clients see the connection close at once.
func (p *Process) Stop() {
	p.t.Helper()
	if !p.Running() {
		p.t.Fatal("natstest: Stop: the server is not running")
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.t.Fatalf("natstest: stop nats-server: %v", err)
	}
	select {
	case <-p.exited:
	case <-time.After(startTimeout):
		p.kill()
		p.t.Fatalf("natstest: nats-server did not exit within %s of SIGTERM; killed it", startTimeout)
	}
}

// kill kills the server if it runs and waits for it to exit.
func (p *Process) kill() {
	if !p.Running() {
		return
	}
	_ = p.cmd.Process.Kill() // it may have exited since Running
	<-p.exited
}

// logTail returns the end of the server's log, for a failure message.
func (p *Process) logTail() string {
	b, err := os.ReadFile(p.logFile)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	const limit = 4000
	if len(b) > limit {
		b = b[len(b)-limit:]
	}
	return string(b)
}
