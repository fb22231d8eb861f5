//go:build restart

package conduit_test

// A PostgreSQL restart in the middle of a run. It restarts the whole server,
// so it is kept out of the ordinary `go test ./...` (where parallel tests
// share the server) behind the restart build tag; `make test` runs it on its
// own afterwards:
//
//	go test -race -count=1 -tags restart -run '^TestPostgresRestart' .

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// restartServer restarts the local PostgreSQL cluster with pg_ctlcluster.
func restartServer(t *testing.T) {
	t.Helper()
	versions, err := os.ReadDir("/etc/postgresql")
	_, lookErr := exec.LookPath("pg_ctlcluster")
	if err != nil || len(versions) == 0 || lookErr != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot restart PostgreSQL here: no cluster in /etc/postgresql (%v) or no pg_ctlcluster (%v)", err, lookErr)
		}
		t.Skipf("cannot restart PostgreSQL here: no cluster in /etc/postgresql (%v) or no pg_ctlcluster (%v)", err, lookErr)
	}
	version := versions[0].Name()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, "pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart").CombinedOutput()
	if err != nil {
		t.Fatalf("pg_ctlcluster %s main restart: %v\n%s", version, err, out)
	}
	t.Logf("restarted PostgreSQL %s in %s", version, time.Since(start).Round(time.Millisecond))
}

// waitForRetrying is WaitFor, retried while its errors are the server's or
// the connection's (a pool's connections all die with the server).
func waitForRetrying(t *testing.T, store *conduit.Store, projection string, pos conduit.Position, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		err := store.WaitFor(ctx, projection, pos)
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%s did not pass %s within %s: %v", projection, pos, timeout, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestPostgresRestart restarts the server while a projector (in another
// Store than the appender, polling only once a minute) and an appender loop
// run. The appender retries appends that fail with the same event ids; the
// projector converges without a restart, and once its listener is back a
// new append wakes it by NOTIFY again.
func TestPostgresRestart(t *testing.T) {
	_, pool := newStore(t, nil)
	createFaultTables(t, pool)
	url := pool.Config().ConnString()
	appender, _ := openStore(t, url, "restart-appender", nil)
	proj, _ := openStore(t, url, "restart-projector", nil)
	ctx := testContext(t)

	const pollInterval = time.Minute
	startFaultProjector(t, proj, "restart", "p1",
		conduit.ProjectorConfig{PollInterval: pollInterval, RetryBackoff: 50 * time.Millisecond}, nil)
	waitListenerReady(t, proj)

	// The appender loop: a deposit every 10 ms, each retried until stored.
	actx, stopAppends := context.WithCancel(ctx)
	defer stopAppends()
	var appended, retried atomic.Int64
	progress := make(chan int64, 1) // latest count, for the test to follow
	appendDone := make(chan error, 1)
	go func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-actx.Done():
				appendDone <- nil
				return
			case <-tick.C:
			}
			e := faultDeposit(t, int64(i%9+1), false)
			stream := fmt.Sprintf("acct-%d", i%4)
			_, err := appender.Append(actx, stream, conduit.Any, e)
			if err != nil && actx.Err() == nil {
				// A restart leaves the outcome unknown, and says so: retry
				// with the same event id.
				if !conduit.IsOutcomeUnknown(err) {
					appendDone <- fmt.Errorf("append failed during the restart with an error not classified as outcome unknown: %w", err)
					return
				}
				retried.Add(1)
				_, err = appendRetry(actx, appender, stream, e)
			}
			if err != nil {
				if actx.Err() != nil {
					appendDone <- nil
				} else {
					appendDone <- err
				}
				return
			}
			n := appended.Add(1)
			select {
			case <-progress:
			default:
			}
			progress <- n
		}
	}()
	// awaitAppended waits until the loop has stored n events.
	awaitAppended := func(n int64, what string) {
		t.Helper()
		timeout := time.After(60 * time.Second)
		for appended.Load() < n {
			select {
			case <-progress:
			case err := <-appendDone:
				t.Fatalf("the appender stopped %s: %v", what, err)
			case <-timeout:
				t.Fatalf("the appender stored %d events, not %d, %s", appended.Load(), n, what)
			}
		}
	}

	awaitAppended(50, "before the restart")
	waitForRetrying(t, proj, "restart", lastLogPosition(t, pool), 30*time.Second)
	listenerBefore := conduit.ListenerPID(proj)

	restartServer(t)
	after := appended.Load()
	awaitAppended(after+100, "after the restart")
	stopAppends()
	if err := <-appendDone; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d events appended, %d appends retried", appended.Load(), retried.Load())
	if retried.Load() == 0 {
		t.Log("no append failed: the restart fell between appends")
	}

	// The projector converges, and NOTIFY wakes it again once its listener
	// has reconnected: appends from the other store are applied well
	// within the poll interval.
	waitListenerReconnected(t, proj, listenerBefore)
	if err := appendUntilApplied(ctx, appender, proj, "restart", 45*time.Second); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	waitForRetrying(t, proj, "restart", lastLogPositionRetrying(t, ctx, pool), 30*time.Second)

	checkFaultTables(t, proj, pool)
	st, err := proj.ProjectionStatus(ctx, "restart")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("status after the restart: state %s, epoch %d, %d events applied", st.State, st.Epoch, st.EventsApplied)
}

// lastLogPositionRetrying is lastLogPosition on a pool whose connections
// may have died with the server.
func lastLogPositionRetrying(t *testing.T, ctx context.Context, pool *pgxpool.Pool) conduit.Position {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var tx, pos int64
		err := pool.QueryRow(ctx, `SELECT transaction_id::text::bigint, global_position FROM conduit.events
			ORDER BY transaction_id DESC, global_position DESC LIMIT 1`).Scan(&tx, &pos)
		if err == nil {
			return conduit.Position{TransactionID: uint64(tx), GlobalPosition: pos}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("last log position: %v", err)
		}
		time.Sleep(50 * time.Millisecond) // the server is coming back; nothing signals it
	}
}
