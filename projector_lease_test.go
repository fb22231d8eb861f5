package conduit_test

// Issue 7: a handler slower than the lease, attempts that must survive a
// change of owner, and projectors that must not starve appends.

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/conduit-es/conduit"
)

// waitStatus polls the projection's status until ok holds (failing the test
// after a minute) and returns it. For database states nothing signals.
func waitStatus(t testing.TB, store *conduit.Store, name, what string, ok func(conduit.ProjectionStatus) bool) conduit.ProjectionStatus {
	t.Helper()
	var st conduit.ProjectionStatus
	poll(t, time.Minute, what, func() bool {
		var err error
		st, err = store.ProjectionStatus(context.Background(), name)
		return err == nil && ok(st)
	})
	return st
}

// The failed attempts at a poison event are stored with the projection: an
// instance taking over goes on counting where the last owner stopped, so
// the poison policy applies after MaxAttempts failures in all, however
// often the owner changes. (Each new owner used to count from zero: with a
// slow handler that lost the lease on every try, the policy never applied.)
func TestProjectorAttemptsSurviveOwnerChange(t *testing.T) {
	t.Parallel()
	for _, policy := range []conduit.PoisonPolicy{conduit.PoisonStop, conduit.PoisonPark} {
		t.Run(fmt.Sprint("policy=", policy), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			store, pool := newStore(t, nil)
			createLedger(t, pool)
			appendN(t, store, "a", 1)
			bad, err := store.Append(ctx, "poison", conduit.NoStream, mustEvent(t, "bad", 1))
			if err != nil {
				t.Fatal(err)
			}
			last := appendN(t, store, "b", 1)
			badID := eventIDAt(t, store, "poison", bad.Version)

			const maxAttempts = 3
			var tries [maxAttempts]atomic.Int32 // by instance
			var epochs []int64
			for i := range maxAttempts {
				l := &ledger{name: "ledger", by: fmt.Sprint(i), fail: func(e conduit.Event) error {
					if e.Type == "bad" {
						tries[i].Add(1)
						return errBoom
					}
					return nil
				}}
				// A failed try waits a minute before the next: each instance
				// tries once before the test stops it.
				stop := runProjector(t, newProjector(t, store, l, &conduit.ProjectorConfig{
					InstanceID: fmt.Sprint("instance-", i), Poison: policy, MaxAttempts: maxAttempts,
					RetryBackoff: time.Minute, StalledRetryInterval: time.Hour, PollInterval: 20 * time.Millisecond,
				}))
				var st conduit.ProjectionStatus
				switch {
				case i < maxAttempts-1:
					st = waitStatus(t, store, "ledger", fmt.Sprintf("failed attempt %d", i+1), func(st conduit.ProjectionStatus) bool {
						return st.FailedAttempts == i+1
					})
					if st.FailingEventID != badID || !strings.Contains(st.LastError, "boom") || st.State == conduit.StateStalled {
						t.Fatalf("after %d failed attempts: status %+v", i+1, st)
					}
				case policy == conduit.PoisonStop:
					st = waitForState(t, store, "ledger", conduit.StateStalled)
				default:
					waitFor(t, store, "ledger", last.Position)
					st, _ = store.ProjectionStatus(ctx, "ledger")
				}
				epochs = append(epochs, st.Epoch)
				stop() // releases the lease: the next instance takes over
			}
			for i := range tries {
				if n := tries[i].Load(); n != 1 {
					t.Errorf("instance %d tried the poison event %d times, want once (epochs %v)", i, n, epochs)
				}
			}
			if epochs[0] >= epochs[1] || epochs[1] >= epochs[2] {
				t.Errorf("epochs %v: the instances did not take over from each other", epochs)
			}
			st, err := store.ProjectionStatus(ctx, "ledger")
			if err != nil {
				t.Fatal(err)
			}
			if policy == conduit.PoisonStop {
				if st.State != conduit.StateStalled || st.StalledEventID != badID || !strings.Contains(st.StallReason, "boom") ||
					st.FailedAttempts != maxAttempts {
					t.Fatalf("status %+v, want stalled at the poison event after %d attempts", st, maxAttempts)
				}
				return
			}
			parked, err := store.ParkedEvents(ctx, "ledger")
			if err != nil {
				t.Fatal(err)
			}
			if len(parked) != 1 || parked[0].EventID != badID || parked[0].Attempts != maxAttempts ||
				!strings.Contains(parked[0].Error, "boom") {
				t.Fatalf("parked %+v, want the poison event after %d attempts", parked, maxAttempts)
			}
			if st.FailingEventID != [16]byte{} || st.FailedAttempts != 0 || st.LastError != "" {
				t.Fatalf("status after parking %+v: the failure is not forgotten", st)
			}
			if rows := readLedger(t, pool); len(rows) != 2 {
				t.Fatalf("ledger has %d rows, want the 2 events around the parked one", len(rows))
			}
		})
	}
}

// A rebuild forgets the failures along with the checkpoint: the replay
// tries every event afresh (conduit.rebuild_projection, migration 5).
func TestRebuildForgetsFailedAttempts(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendN(t, store, "a", 1)
	if _, err := store.Append(ctx, "poison", conduit.NoStream, mustEvent(t, "bad", 1)); err != nil {
		t.Fatal(err)
	}
	var broken atomic.Bool
	broken.Store(true)
	l := &ledger{name: "ledger", fail: func(e conduit.Event) error {
		if e.Type == "bad" && broken.Load() {
			return errBoom
		}
		return nil
	}}
	p := newProjector(t, store, l, &conduit.ProjectorConfig{MaxAttempts: 2, RetryBackoff: time.Minute})
	stop := runProjector(t, p)
	waitStatus(t, store, "ledger", "a failed attempt", func(st conduit.ProjectionStatus) bool { return st.FailedAttempts == 1 })
	stop()
	if err := store.RebuildProjection(ctx, "ledger"); err != nil {
		t.Fatal(err)
	}
	st, err := store.ProjectionStatus(ctx, "ledger")
	if err != nil {
		t.Fatal(err)
	}
	if st.FailedAttempts != 0 || st.FailingEventID != [16]byte{} || st.LastError != "" {
		t.Fatalf("after a rebuild: status %+v, want no failure remembered", st)
	}
	// One more failure is the first of the replay, not the second.
	stop = runProjector(t, newProjector(t, store, l, &conduit.ProjectorConfig{MaxAttempts: 2, RetryBackoff: time.Minute}))
	st = waitStatus(t, store, "ledger", "a failed attempt in the replay", func(st conduit.ProjectionStatus) bool { return st.FailedAttempts > 0 })
	if st.FailedAttempts != 1 || st.State == conduit.StateStalled {
		t.Fatalf("replay: status %+v, want one failed attempt, not stalled", st)
	}
	stop()
}
