package conduit_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/conduit-es/conduit"
)

// healthCfg is a health check with a short stall bound, for tests.
var healthCfg = &conduit.HealthConfig{StallAfter: 300 * time.Millisecond}

// waitHealth polls Store.Health until the named worker's check satisfies
// ok, and returns it.
func waitHealth(t testing.TB, store *conduit.Store, cfg *conduit.HealthConfig, worker, name, what string, ok func(conduit.HealthCheck) bool) conduit.HealthCheck {
	t.Helper()
	// Long: other tests' transactions on the shared server hold the
	// horizon now and then, for seconds.
	return waitHealthWithin(t, 2*time.Minute, store, cfg, worker, name, what, ok)
}

func waitHealthWithin(t testing.TB, within time.Duration, store *conduit.Store, cfg *conduit.HealthConfig, worker, name, what string, ok func(conduit.HealthCheck) bool) conduit.HealthCheck {
	t.Helper()
	deadline := time.Now().Add(within)
	var last conduit.HealthReport
	for {
		rep, err := store.Health(context.Background(), cfg)
		if err != nil {
			t.Fatalf("Health: %v", err)
		}
		last = rep
		for _, c := range rep.Checks {
			if c.Worker == worker && c.Name == name && ok(c) {
				if !c.Healthy && rep.Healthy {
					t.Fatalf("report healthy with an unhealthy check: %+v", rep)
				}
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s never became %s: %+v", worker, name, what, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func unhealthyBecause(reason string) func(conduit.HealthCheck) bool {
	return func(c conduit.HealthCheck) bool { return !c.Healthy && strings.Contains(c.Reason, reason) }
}

func healthy(c conduit.HealthCheck) bool { return c.Healthy }

// Idle is healthy however long ago the last progress was; the handler
// answers 200 with the report.
func TestHealthIdle(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendN(t, store, "a", 3)
	if err := newProjector(t, store, &ledger{name: "ledger"}, nil).CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * healthCfg.StallAfter) // long past the bound, with nothing to do
	rep, err := store.Health(ctx, healthCfg)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Healthy || len(rep.Checks) != 2 {
		t.Fatalf("idle store: %+v; want healthy, a projection and the relay", rep)
	}
	srv := httptest.NewServer(store.HealthHandler(healthCfg))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body conduit.HealthReport
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !body.Healthy {
		t.Fatalf("handler: %d %+v", resp.StatusCode, body)
	}
}

// No instance running while events wait: unhealthy, "no live owner"; the
// handler answers 503; once a projector runs again, healthy.
func TestHealthNoInstance(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendN(t, store, "a", 1)
	if err := newProjector(t, store, &ledger{name: "ledger"}, nil).CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	appendN(t, store, "a", 5) // nobody runs the projector now
	patient := &conduit.HealthConfig{StallAfter: healthCfg.StallAfter, StallAfterFor: map[string]time.Duration{"ledger": time.Hour}}
	time.Sleep(2 * healthCfg.StallAfter)
	if rep, err := store.Health(ctx, patient); err != nil || !rep.Healthy {
		t.Fatalf("with a threshold of its own of an hour: %+v, %v; want healthy", rep, err)
	}
	c := waitHealth(t, store, healthCfg, "projection", "ledger", "unhealthy", unhealthyBecause("no live owner"))
	if c.Pending != 5 {
		t.Fatalf("check %+v; want 5 pending", c)
	}
	srv := httptest.NewServer(store.HealthHandler(healthCfg))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("handler answered %d; want 503", resp.StatusCode)
	}
	runProjector(t, newProjector(t, store, &ledger{name: "ledger"}, nil))
	waitHealth(t, store, healthCfg, "projection", "ledger", "healthy", healthy)
}

// A poison event under PoisonStop: unhealthy, "stalled on event".
func TestHealthPoisonEvent(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendN(t, store, "a", 1)
	l := &ledger{name: "ledger", fail: func(e conduit.Event) error { return errBoom }}
	runProjector(t, newProjector(t, store, l, &conduit.ProjectorConfig{MaxAttempts: 1, RetryBackoff: time.Millisecond}))
	c := waitHealth(t, store, healthCfg, "projection", "ledger", "stalled", unhealthyBecause("stalled on event"))
	if !strings.Contains(c.Reason, "boom") {
		t.Fatalf("reason %q; want the handler's error", c.Reason)
	}
}

// A transaction that holds the horizon (it has a transaction id and stays
// open): events committed after it began wait; unhealthy, "horizon held by
// pid N"; healthy again once it ends.
func TestHealthHeldHorizon(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	runProjector(t, newProjector(t, store, &ledger{name: "ledger"}, &conduit.ProjectorConfig{PollInterval: 20 * time.Millisecond}))
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx) //nolint:errcheck
	var xid int64
	if err := holder.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	appendN(t, store, "a", 3)
	// Bounded: while it waits, the open transaction holds back every
	// reader on the server (other tests' too).
	c := waitHealthWithin(t, 20*time.Second, store, healthCfg, "projection", "ledger", "held", unhealthyBecause("horizon held by pid"))
	// The oldest transaction on the server is named; it is ours unless a
	// parallel test's is older.
	if pid := backendPID(t, ctx, holder); !strings.Contains(c.Reason, fmt.Sprintf("pid %d ", pid)) {
		t.Logf("reason %q names another backend than ours (%d)", c.Reason, pid)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, store, healthCfg, "projection", "ledger", "healthy", healthy)
}

// An owner paused (SIGSTOP) while events wait: unhealthy, first "holds the
// lease but has passed no event", then "no live owner" once its lease runs
// out; after SIGCONT it catches up and is healthy again.
func TestHealthPausedOwner(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createFaultTables(t, pool)
	if _, err := store.Append(ctx, "acct-1", conduit.Any, faultDeposit(t, 1, false)); err != nil {
		t.Fatal(err)
	}
	h := startHelper(t, helperSpec{
		URL: pool.Config().ConnString(), Projection: "paused", Instance: "sleeper",
		BatchSize: 10, LeaseDuration: 2 * time.Second, PollInterval: 50 * time.Millisecond,
	})
	h.expect(t, "started")
	waitHealth(t, store, healthCfg, "projection", "paused", "caught up", func(c conduit.HealthCheck) bool {
		return c.Healthy && c.Owner == "sleeper" && c.Pending == 0
	})
	h.signal(t, syscall.SIGSTOP)
	for i := range 3 {
		if _, err := store.Append(ctx, "acct-1", conduit.Any, faultDeposit(t, int64(i+2), false)); err != nil {
			t.Fatal(err)
		}
	}
	c := waitHealth(t, store, healthCfg, "projection", "paused", "unhealthy", func(c conduit.HealthCheck) bool { return !c.Healthy })
	// Before its lease runs out the owner still holds it (or, on a shared
	// server, another transaction may be the one holding the events back).
	if !strings.Contains(c.Reason, `owner "sleeper" holds the lease`) && !strings.Contains(c.Reason, "no live owner") &&
		!strings.Contains(c.Reason, "horizon held by pid") {
		t.Fatalf("reason %q", c.Reason)
	}
	waitHealth(t, store, healthCfg, "projection", "paused", "ownerless", unhealthyBecause("no live owner"))
	h.signal(t, syscall.SIGCONT)
	waitHealth(t, store, healthCfg, "projection", "paused", "healthy", func(c conduit.HealthCheck) bool { return c.Healthy && c.Pending == 0 })
	h.stop(t)
}

// Instances that keep taking the lease from each other: "lease flapping",
// even while events are passed now and then.
func TestHealthLeaseFlapping(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendN(t, store, "a", 1)
	if err := newProjector(t, store, &ledger{name: "ledger"}, nil).CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	cfg := &conduit.HealthConfig{StallAfter: time.Minute}
	for range 4 {
		if _, err := store.Health(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `UPDATE conduit.projections SET epoch = epoch + 1, owner = 'x', lease_expires_at = now() + interval '1 minute'`); err != nil {
			t.Fatal(err)
		}
	}
	waitHealth(t, store, cfg, "projection", "ledger", "flapping", unhealthyBecause("lease flapping"))
}

// Messages enqueued and no relay running: unhealthy, "no live relay";
// healthy once a relay delivers them.
func TestHealthRelay(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)
	if err := store.Enqueue(ctx, conduit.NewMessage("t", "k", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, store, healthCfg, "relay", "outbox", "unhealthy", unhealthyBecause("no live relay"))
	drain(t, ctx, newRelay(t, store, &recorder{}, nil))
	waitHealth(t, store, healthCfg, "relay", "outbox", "healthy", healthy)
}
