package conduit_test

// Issue 7: a handler slower than the lease, attempts that must survive a
// change of owner, and projectors that must not starve appends.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

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

// slowHandler takes d on events of type "slow": in Go (time.Sleep, deaf to
// its context, then a statement unless noSQL) or in the database
// (pg_sleep). It reports each call's start and end, and hangs until hang
// is closed if hang is set.
type slowHandler struct {
	name    string
	inDB    bool
	noSQL   bool
	d       time.Duration
	calls   atomic.Int32
	running atomic.Bool
	started chan struct{} // one value per call, if not nil
	hang    <-chan struct{}
}

func (h *slowHandler) Name() string { return h.name }

func (h *slowHandler) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	if e.Type != "slow" {
		_, err := tx.Exec(ctx, `SELECT 1`)
		return err
	}
	h.calls.Add(1)
	h.running.Store(true)
	defer h.running.Store(false)
	if h.started != nil {
		h.started <- struct{}{}
	}
	if h.hang != nil {
		<-h.hang
		return nil
	}
	if h.inDB {
		_, err := tx.Exec(ctx, `SELECT pg_sleep($1)`, h.d.Seconds())
		return err
	}
	time.Sleep(h.d)
	if h.noSQL {
		return nil
	}
	_, err := tx.Exec(ctx, `SELECT 1`)
	return err
}

// statusSampler reads a projection's status every 20ms until stopped,
// counting the states seen, those seen while the handler ran, and the
// epochs.
type statusSampler struct {
	mu         sync.Mutex
	states     map[conduit.ProjectionState]int
	whileApply map[conduit.ProjectionState]int
	epochs     map[int64]bool
	cancel     context.CancelFunc
	done       chan struct{}
}

func sampleStatus(store *conduit.Store, name string, h *slowHandler) *statusSampler {
	ctx, cancel := context.WithCancel(context.Background())
	s := &statusSampler{states: map[conduit.ProjectionState]int{}, whileApply: map[conduit.ProjectionState]int{},
		epochs: map[int64]bool{}, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			running := h.running.Load()
			st, err := store.ProjectionStatus(ctx, name)
			if err != nil || st.Epoch == 0 {
				continue // not registered yet, or the read was cut short
			}
			running = running && h.running.Load() // the handler ran all along the read
			s.mu.Lock()
			s.states[st.State]++
			if running {
				s.whileApply[st.State]++
			}
			s.epochs[st.Epoch] = true
			s.mu.Unlock()
		}
	}()
	return s
}

// stop stops sampling and returns the counts.
func (s *statusSampler) stop() (states, whileApply map[conduit.ProjectionState]int, epochs map[int64]bool) {
	s.cancel()
	<-s.done
	return s.states, s.whileApply, s.epochs
}

// The scenario: LeaseDuration 2s, a handler that takes 3s (in Go or
// in the database), MaxAttempts 2. The handler overruns HandlerTimeout
// (LeaseDuration by default) on each try: each try is a failed attempt, and
// after two the projection stalls with the reason (PoisonStop) or parks the
// event and goes on (PoisonPark). The owner keeps its lease all along (one
// epoch) and the status never says stopped. It used to lose its lease on
// every try (the idle-in-transaction timeout cut the batch), count attempt
// 1 again under each new epoch, and show stopped, with no stall reason,
// while the handler ran.
func TestProjectorSlowHandlerStalls(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		inDB   bool
		policy conduit.PoisonPolicy
	}{
		{"time.Sleep/stop", false, conduit.PoisonStop},
		{"pg_sleep/stop", true, conduit.PoisonStop},
		{"time.Sleep/park", false, conduit.PoisonPark},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			store, _ := newStore(t, nil)
			slow, err := store.Append(ctx, "s", conduit.Any, mustEvent(t, "slow", 1))
			if err != nil {
				t.Fatal(err)
			}
			last := appendN(t, store, "t", 1)
			h := &slowHandler{name: "slow", inDB: tc.inDB, d: 3 * time.Second}
			sampler := sampleStatus(store, "slow", h)
			runProjector(t, newProjector(t, store, h, &conduit.ProjectorConfig{
				LeaseDuration: 2 * time.Second, MaxAttempts: 2, Poison: tc.policy,
			}))
			var st conduit.ProjectionStatus
			if tc.policy == conduit.PoisonStop {
				st = waitStatus(t, store, "slow", "a stall", func(st conduit.ProjectionStatus) bool {
					return st.State == conduit.StateStalled
				})
			} else {
				waitFor(t, store, "slow", last.Position)
				st, _ = store.ProjectionStatus(ctx, "slow")
			}
			states, whileApply, epochs := sampler.stop()
			t.Logf("states sampled %v (while the handler ran: %v), epochs %v", states, whileApply, epochs)
			slowID := eventIDAt(t, store, "s", slow.Version)
			if n := h.calls.Load(); n != 2 {
				t.Errorf("the slow handler ran %d times, want 2 (MaxAttempts)", n)
			}
			if states[conduit.StateStopped] > 0 {
				t.Errorf("status said stopped %d times while the owner applied", states[conduit.StateStopped])
			}
			if whileApply[conduit.StateRunning] < 10 {
				t.Errorf("status sampled %d times as running while the handler ran, want at least 10", whileApply[conduit.StateRunning])
			}
			if len(epochs) != 1 {
				t.Errorf("epochs %v: the owner of a slow handler lost its lease", epochs)
			}
			if tc.policy == conduit.PoisonStop {
				if st.StalledEventID != slowID || !strings.Contains(st.StallReason, "HandlerTimeout") ||
					st.FailedAttempts != 2 || !st.Checkpoint.Before(slow.Position) {
					t.Fatalf("status %+v, want stalled at the slow event after 2 attempts, reason HandlerTimeout", st)
				}
				return
			}
			parked, err := store.ParkedEvents(ctx, "slow")
			if err != nil {
				t.Fatal(err)
			}
			if len(parked) != 1 || parked[0].EventID != slowID || parked[0].Attempts != 2 ||
				!strings.Contains(parked[0].Error, "HandlerTimeout") {
				t.Fatalf("parked %+v, want the slow event after 2 attempts", parked)
			}
		})
	}
}

// The same scenario with a change of owner between the attempts: the second
// owner counts on from the first's attempt, under a new epoch.
func TestProjectorSlowHandlerAttemptsAcrossEpochs(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)
	slow, err := store.Append(ctx, "s", conduit.Any, mustEvent(t, "slow", 1))
	if err != nil {
		t.Fatal(err)
	}
	cfg := func(id string) *conduit.ProjectorConfig {
		return &conduit.ProjectorConfig{InstanceID: id, LeaseDuration: 2 * time.Second, MaxAttempts: 2,
			RetryBackoff: time.Minute} // a waits before a second try: the test stops it first
	}
	a := &slowHandler{name: "slow", d: 3 * time.Second}
	stopA := runProjector(t, newProjector(t, store, a, cfg("a")))
	st := waitStatus(t, store, "slow", "a's failed attempt", func(st conduit.ProjectionStatus) bool { return st.FailedAttempts == 1 })
	epochA := st.Epoch
	stopA()
	b := &slowHandler{name: "slow", d: 3 * time.Second}
	runProjector(t, newProjector(t, store, b, cfg("b")))
	st = waitStatus(t, store, "slow", "a stall", func(st conduit.ProjectionStatus) bool { return st.State == conduit.StateStalled })
	if a.calls.Load() != 1 || b.calls.Load() != 1 {
		t.Errorf("a tried %d times, b %d times; want once each", a.calls.Load(), b.calls.Load())
	}
	if st.Owner != "b" || st.Epoch <= epochA || st.FailedAttempts != 2 || st.StalledEventID != eventIDAt(t, store, "s", slow.Version) {
		t.Fatalf("status %+v, want b stalled after 2 attempts in all, under a later epoch than a's %d", st, epochA)
	}
}

// The scenario with HandlerTimeout raised to 5s: a handler slower
// than the lease but within HandlerTimeout is merely slow: its event is
// applied, the owner keeps its lease (one epoch), and
// the status never says stopped; it says running while the handler runs,
// although the batch before had caught up. A batch of handlers that each
// spend time in Go without a statement is cut by time and commits as it
// goes, rather than leave its transaction idle until the server ends it.
func TestProjectorSlowHandlerWithinHandlerTimeout(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		inDB   bool
		d      time.Duration
		events int
	}{
		{"time.Sleep", false, 3 * time.Second, 1},
		{"pg_sleep", true, 3 * time.Second, 1},
		{"many in Go, no statement", false, 300 * time.Millisecond, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			store, _ := newStore(t, nil)
			h := &slowHandler{name: "slow", inDB: tc.inDB, noSQL: tc.events > 1, d: tc.d}
			first := appendN(t, store, "t", 1)
			runProjector(t, newProjector(t, store, h, &conduit.ProjectorConfig{
				LeaseDuration: 2 * time.Second, HandlerTimeout: 5 * time.Second, BatchSize: 100,
			}))
			waitFor(t, store, "slow", first.Position)
			waitStatus(t, store, "slow", "caught up", func(st conduit.ProjectionStatus) bool { return st.State == conduit.StateCaughtUp })
			sampler := sampleStatus(store, "slow", h)
			events := make([]conduit.EventData, tc.events)
			for i := range events {
				events[i] = mustEvent(t, "slow", i)
			}
			res, err := store.Append(ctx, "s", conduit.Any, events...)
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, store, "slow", res.Position)
			states, whileApply, epochs := sampler.stop()
			t.Logf("states sampled %v (while the handler ran: %v), epochs %v", states, whileApply, epochs)
			st, err := store.ProjectionStatus(ctx, "slow")
			if err != nil {
				t.Fatal(err)
			}
			if n := h.calls.Load(); n != int32(tc.events) || st.FailedAttempts != 0 || st.EventsApplied != int64(tc.events)+1 {
				t.Errorf("handler ran %d times for %d events; status %+v", n, tc.events, st)
			}
			if states[conduit.StateStopped] > 0 || len(epochs) != 1 {
				t.Errorf("states %v, epochs %v: the owner of a slow handler lost its lease", states, epochs)
			}
			if whileApply[conduit.StateRunning] == 0 {
				t.Errorf("status never said running while the handler ran: %v", whileApply)
			}
		})
	}
}

// A handler that never returns (deaf to its context): the lease keeper
// counts its overrun at HandlerTimeout; at twice HandlerTimeout it gives
// the stuck batch's connection budget slot back and stops renewing, so
// another instance (here on the same Store, sharing the budget) takes over
// once the lease expires. After MaxAttempts such owners the next one parks
// the event without trying it again, and goes on.
func TestProjectorHungHandlerParkedAfterTakeovers(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)
	slow, err := store.Append(ctx, "s", conduit.Any, mustEvent(t, "slow", 1))
	if err != nil {
		t.Fatal(err)
	}
	last := appendN(t, store, "t", 1)
	hang := make(chan struct{})
	var handlers []*slowHandler
	for i := range 3 {
		h := &slowHandler{name: "slow", hang: hang}
		handlers = append(handlers, h)
		runProjector(t, newProjector(t, store, h, &conduit.ProjectorConfig{
			InstanceID: fmt.Sprint("hung-", i), LeaseDuration: 500 * time.Millisecond, HandlerTimeout: 300 * time.Millisecond,
			MaxAttempts: 2, Poison: conduit.PoisonPark, PollInterval: 50 * time.Millisecond,
		}))
	}
	t.Cleanup(func() { close(hang) }) // before the projectors stop: the hung handlers return
	waitFor(t, store, "slow", last.Position)
	parked, err := store.ParkedEvents(ctx, "slow")
	if err != nil {
		t.Fatal(err)
	}
	if len(parked) != 1 || parked[0].EventID != eventIDAt(t, store, "s", slow.Version) || parked[0].Attempts != 2 ||
		!strings.Contains(parked[0].Error, "HandlerTimeout") {
		t.Fatalf("parked %+v, want the hung event after 2 attempts", parked)
	}
	calls := 0
	for _, h := range handlers {
		calls += int(h.calls.Load())
	}
	if calls != 2 {
		t.Fatalf("the hung handler was called %d times, want 2 (MaxAttempts)", calls)
	}
}

// An owner paused (SIGSTOP) in the middle of a batch, in its handler: its
// lease keeper is paused with it, so its lease expires; the server ends
// its transaction, idle for 1.25 × HandlerTimeout, which frees its locks.
// Another instance takes over within about max(LeaseDuration, 1.25 ×
// HandlerTimeout), also when HandlerTimeout is longer than the lease, and
// every event is applied once.
func TestProjectorPausedOwnerTakenOver(t *testing.T) {
	t.Parallel()
	const lease = time.Second
	for _, handlerTimeout := range []time.Duration{0 /* LeaseDuration */, 3 * time.Second} {
		t.Run(fmt.Sprint("HandlerTimeout=", handlerTimeout), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			store, pool := newStore(t, nil)
			createFaultTables(t, pool)
			spec := helperSpec{URL: pool.Config().ConnString(), Projection: "paused", BatchSize: 20,
				LeaseDuration: lease, HandlerTimeout: handlerTimeout, PollInterval: 100 * time.Millisecond}
			stalls := make(chan stallLine, 4)
			procs := map[string]*helperProc{}
			for _, id := range []string{"a", "b"} {
				s := spec
				s.Instance = id
				procs[id] = startHelper(t, s)
				procs[id].forwardStalls(stalls)
			}
			if _, err := appendRetry(ctx, store, "acct", faultDeposit(t, 1, false), faultDeposit(t, 2, false)); err != nil {
				t.Fatal(err)
			}
			e := faultDeposit(t, 3, true)
			res, err := appendRetry(ctx, store, "acct", e, faultDeposit(t, 4, false))
			if err != nil {
				t.Fatal(err)
			}
			first := expectStall(t, stalls, e.ID, "")
			procs[first.instance].signal(t, syscall.SIGSTOP)
			paused := time.Now()
			second := expectStall(t, stalls, e.ID, first.instance)
			took := time.Since(paused)
			bound := max(lease, handlerTimeout*5/4) + lease/3 // and the standby's polling
			t.Logf("%s paused in its batch; %s took over after %s (about %s expected)", first.instance, second.instance,
				took.Round(time.Millisecond), bound)
			if took > bound+5*time.Second {
				t.Errorf("takeover from a paused owner took %s, want about %s", took, bound)
			}
			procs[second.instance].resume(t)
			if err := store.WaitFor(ctx, "paused", res.Position); err != nil {
				t.Fatal(err)
			}
			procs[first.instance].signal(t, syscall.SIGCONT)
			procs[first.instance].resume(t) // its stale batch goes on, and must not commit
			res, err = appendRetry(ctx, store, "acct", faultDeposit(t, 5, false))
			if err != nil {
				t.Fatal(err)
			}
			if err := store.WaitFor(ctx, "paused", res.Position); err != nil {
				t.Fatal(err)
			}
			for _, h := range procs {
				h.stop(t)
			}
			checkFaultTables(t, store, pool)
		})
	}
}

// openPool opens a pool of at most maxConns connections on pool's database.
func openPool(t testing.TB, pool *pgxpool.Pool, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = maxConns
	small, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(small.Close)
	return small
}

// The scenario: four slow projectors on a 4-connection pool. Their
// batches draw on a budget of a quarter of the pool (Config.MaxProjectorConns),
// so appends keep succeeding within a short timeout while the projectors
// work, and the projectors still catch up. (Each batch used to hold a pool
// connection: the four took the whole pool and Append timed out.)
func TestAppendsNotStarvedByProjectors(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pool := openPool(t, newPool(t), 4)
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	backlog, err := store.Append(ctx, "backlog", conduit.NoStream, mustEvent(t, "slow", 1))
	if err != nil {
		t.Fatal(err)
	}
	handlers := make([]*slowHandler, 4)
	for i := range handlers {
		// The event holds the batch's connection for 2s, in the database.
		handlers[i] = &slowHandler{name: fmt.Sprint("slow-", i), inDB: true, d: 2 * time.Second}
		runProjector(t, newProjector(t, store, handlers[i], nil))
	}
	poll(t, 30*time.Second, "the projectors to start applying", func() bool {
		for _, h := range handlers {
			if h.calls.Load() > 0 {
				return true
			}
		}
		return false
	})
	var appended, slowest time.Duration
	for i := 0; appended < 3*time.Second; i++ {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		begin := time.Now()
		_, err := store.Append(actx, "appends", conduit.Any, mustEvent(t, "tick", i))
		took := time.Since(begin)
		cancel()
		if err != nil {
			t.Fatalf("append %d failed after %s while four slow projectors ran on a 4-connection pool: %v", i, took, err)
		}
		appended += took + 20*time.Millisecond
		slowest = max(slowest, took)
		time.Sleep(20 * time.Millisecond) // pacing the appends, not waiting for an event
	}
	t.Logf("slowest append while the projectors worked: %s", slowest)
	for _, h := range handlers {
		waitFor(t, store, h.name, backlog.Position)
	}
}

// Config.MaxProjectorConns ranges from 1 to the pool's MaxConns and
// defaults to a quarter of it.
func TestStoreMaxProjectorConnsRange(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/offline?connect_timeout=1&pool_max_conns=8")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	for _, n := range []int{0, 1, 8} {
		if _, err := conduit.NewStore(pool, &conduit.Config{MaxProjectorConns: n}); err != nil {
			t.Errorf("MaxProjectorConns %d on a pool of 8: %v", n, err)
		}
	}
	for _, n := range []int{-1, 9} {
		_, err := conduit.NewStore(pool, &conduit.Config{MaxProjectorConns: n})
		var ce *conduit.ConfigError
		if !errors.As(err, &ce) || ce.Field != "Config.MaxProjectorConns" {
			t.Errorf("MaxProjectorConns %d on a pool of 8: %v, want a *ConfigError naming the field", n, err)
		}
	}
}
