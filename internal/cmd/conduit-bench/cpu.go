package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// CPU time per event: what a variant costs the machine, as opposed to how
// fast it went. On a shared machine the throughput of one run moves with
// whatever else runs; the CPU time an event takes moves much less, and it
// tells where a ratio comes from (the client's Go code, or the server).
//
// The client's is this process's (getrusage: every goroutine, the pool's
// and the runtime's included). The server's is the sum over the server's
// processes (backends, WAL writer, checkpointer, autovacuum) of their time
// on a CPU (/proc/PID/schedstat, in nanoseconds), read only when the server
// runs on this machine (serverProcs says so). A process that exits during
// a run takes its time with it (the pools keep their connections through
// a run, so this is rare); one that starts counts from zero.

// serverComm is the command name of the server's processes; serverLocal is
// set once the server is found on this machine (findServer).
var serverLocal bool

const serverComm = "postgres"

// findServer says whether the server a connection talks to runs here: its
// backend's pid is a local process of the server's name.
func findServer(ctx context.Context, s *server) {
	var pid int
	if err := s.admin.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		return
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	serverLocal = err == nil && strings.TrimSpace(string(b)) == serverComm
}

// cpuMark is a reading of the CPU time used so far.
type cpuMark struct {
	client time.Duration
	server map[int]time.Duration // by pid; nil when not measured
}

func markCPU() cpuMark {
	m := cpuMark{client: selfCPU()}
	if serverLocal {
		m.server = serverProcs()
	}
	return m
}

// since is the client's and the server's CPU time from m to now (server
// zero when not measured).
func (m cpuMark) since() (client, server time.Duration) {
	client = selfCPU() - m.client
	if m.server == nil {
		return client, 0
	}
	for pid, t := range serverProcs() {
		server += t - m.server[pid]
	}
	return client, server
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// serverProcs is the time on a CPU of each of the server's processes.
func serverProcs() map[int]time.Duration {
	procs := map[int]time.Duration{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		comm, err := os.ReadFile(dir + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != serverComm {
			continue
		}
		st, err := os.ReadFile(dir + "/schedstat")
		if err != nil {
			continue
		}
		f := strings.Fields(string(st))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		pid, perr := strconv.Atoi(filepath.Base(dir))
		if err != nil || perr != nil {
			continue
		}
		procs[pid] = time.Duration(ns)
	}
	return procs
}
