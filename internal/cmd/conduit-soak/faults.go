package main

import (
	"context"
	"log"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// faults injects one fault at a time, at random, about every o.faultEvery,
// until ctx ends.
func (s *soak) faults(ctx context.Context) {
	rng := newRand(s.o.seed, 0)
	kinds := []string{"terminate writer", "terminate projector", "terminate listener", "kill projector",
		"pause projector", "hold horizon"}
	if s.o.restart {
		kinds = append(kinds, "restart postgres")
	}
	var lastRestart time.Time
	for {
		wait := time.Duration(float64(s.o.faultEvery) * (0.5 + rng.Float64()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		kind := kinds[rng.IntN(len(kinds))]
		if kind == "restart postgres" && time.Since(lastRestart) < 30*time.Second {
			kind = "terminate projector"
		}
		ok := false
		switch kind {
		case "terminate writer":
			ok = s.terminate(ctx, "soak-writer")
		case "terminate projector":
			ok = s.terminate(ctx, "soak-projector-%")
		case "terminate listener":
			// A Store's listener connects with the pool's settings, outside
			// the pool, and waits in LISTEN.
			ok = s.terminateWhere(ctx, `application_name LIKE 'soak-projector-%' AND query ILIKE 'LISTEN%'`)
		case "kill projector":
			ok = s.signalChild(rng.IntN(len(s.kids)), syscall.SIGKILL, 0)
		case "pause projector":
			// Longer than the lease: another instance takes over, and the
			// paused one must not move the checkpoint when it resumes.
			pause := s.o.lease + time.Duration(rng.Int64N(int64(2*s.o.lease)))
			ok = s.signalChild(rng.IntN(len(s.kids)), syscall.SIGSTOP, pause)
		case "hold horizon":
			hold := time.Duration(1+rng.IntN(5)) * time.Second
			go s.holdHorizon(ctx, hold)
			ok = true
		case "restart postgres":
			lastRestart = time.Now()
			ok = restartPostgres()
		}
		if ok {
			s.counts.fault(kind)
		}
	}
}

func (s *soak) terminate(ctx context.Context, app string) bool {
	return s.terminateWhere(ctx, "application_name LIKE '"+app+"'")
}

// terminateWhere terminates one random backend of the soak database that
// matches cond (SQL on pg_stat_activity).
func (s *soak) terminateWhere(ctx context.Context, cond string) bool {
	var done bool
	err := s.admin.QueryRow(ctx, `SELECT COALESCE(pg_terminate_backend(pid), false) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND `+cond+`
		ORDER BY random() LIMIT 1`).Scan(&done)
	return err == nil && done
}

// signalChild sends sig to child i; a SIGSTOP is undone with SIGCONT after
// pause, a SIGKILL by a restart after a second.
func (s *soak) signalChild(i int, sig syscall.Signal, pause time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.kids[i]
	if k.paused || k.exited() {
		return false
	}
	if err := k.cmd.Process.Signal(sig); err != nil {
		return false
	}
	switch sig {
	case syscall.SIGSTOP:
		k.paused = true
		time.AfterFunc(pause, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if k.paused {
				_ = k.cmd.Process.Signal(syscall.SIGCONT)
				k.paused = false
			}
		})
	case syscall.SIGKILL:
		done := k.done
		time.AfterFunc(time.Second, func() {
			<-done
			s.mu.Lock()
			defer s.mu.Unlock()
			if k.done != done { // restarted meanwhile (reviveChildren)
				return
			}
			if err := k.start(); err != nil {
				log.Printf("restart %s: %v", k.instance, err)
			}
		})
	}
	return true
}

// holdHorizon keeps a write transaction open for d: readers of the global
// log must wait for it, never skip what commits behind it.
func (s *soak) holdHorizon(ctx context.Context, d time.Duration) {
	tx, err := s.admin.Begin(ctx)
	if err != nil {
		return
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // after Commit, a no-op
	if _, err := tx.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		return
	}
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	_ = tx.Commit(context.Background())
}

// restartPostgres restarts the local cluster, as the restart test does.
func restartPostgres() bool {
	versions, err := os.ReadDir("/etc/postgresql")
	if err != nil || len(versions) == 0 {
		log.Printf("restart postgres: no cluster in /etc/postgresql: %v", err)
		return false
	}
	cmd := exec.Command("pg_ctlcluster", "--skip-systemctl-redirect", versions[0].Name(), "main", "restart", "-m", "fast")
	if out, err := cmd.CombinedOutput(); err != nil {
		log.Printf("restart postgres: %v: %s", err, strings.TrimSpace(string(out)))
		return false
	}
	return true
}
