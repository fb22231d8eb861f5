package engine

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrLeaseLost says the lease is no longer this instance's: another took it
// over (the epoch moved on) or it was released.
var ErrLeaseLost = errors.New("conduit: lease lost")

// ErrStandby says another instance holds the lease.
var ErrStandby = errors.New("conduit: lease held by another instance")

// LeaseConfig is what a Lease needs of its client (a projector, a relay):
// the statements on the client's lease row, and the client's timing.
type LeaseConfig struct {
	// Duration is how long the lease lasts after a renewal. The keeper
	// renews it every Duration/3.
	Duration time.Duration
	// CallTimeout bounds a call watched by Watch (a handler, a publish): at
	// CallTimeout it has overrun, at twice CallTimeout it is stuck.
	CallTimeout time.Duration
	// Acquire takes the lease if it is free or expired and returns its
	// epoch, or ErrStandby.
	Acquire func(ctx context.Context) (int64, error)
	// Renew extends epoch's lease; call is the call in flight, if any.
	// ErrLeaseLost (or pgx.ErrNoRows) means the lease is lost.
	Renew func(ctx context.Context, epoch int64, call *Call) error
	// Release gives epoch's lease up.
	Release func(ctx context.Context, epoch int64) error
	// Overrun fails call, which ran longer than CallTimeout, from the
	// keeper's goroutine: it cancels the call's batch and records the
	// failure, and returns what Watch returns for the call.
	Overrun func(ctx context.Context, epoch int64, call *Call) error
	// Log gets lease changes.
	Log *slog.Logger
	// OnChange, if set, is told of each change: "acquired", "lost" or
	// "released" (for metrics).
	OnChange func(change string)
}

func (c *LeaseConfig) changed(change string) {
	if c.OnChange != nil {
		c.OnChange(change)
	}
}

// Lease is a client's lease on its row (a projection's, the relay's): one
// instance holds it at a time, fenced by an epoch that each acquisition
// bumps. While held, a keeper goroutine renews it every Duration/3 on short
// statements of its own, whatever the client is doing (waiting, applying a
// batch longer than the lease, waiting for a connection), so a standby
// takes over only from an owner that stopped renewing: one that died, was
// paused (SIGSTOP, a frozen VM: the keeper is paused with it) or is cut off.
//
// The keeper also watches the call in flight (Watch). One that runs longer
// than CallTimeout overran: the keeper fails it through Overrun at once,
// whether or not it ever returns. One still running after twice
// CallTimeout is stuck: the keeper gives its batch's connection slot back
// (Batch.Release) and stops renewing until it returns, so that another
// instance takes over once the lease expires. A keeper that finds the lease
// lost cancels the batch in flight with ErrLeaseLost and ends.
//
// A Lease is used from one goroutine (its client's loop); the keeper is its
// own.
type Lease struct {
	cfg    LeaseConfig
	epoch  int64 // 0: not held
	keeper *keeper
}

// NewLease returns a lease, not held.
func NewLease(cfg LeaseConfig) *Lease { return &Lease{cfg: cfg} }

// Epoch is the epoch held, 0 when none.
func (l *Lease) Epoch() int64 { return l.epoch }

// Acquire makes sure the lease is held: it drops a lease its keeper found
// lost, and takes the lease if none is held. It reports whether it took it
// now; ErrStandby when another instance holds it.
func (l *Lease) Acquire(ctx context.Context) (bool, error) {
	if l.keeper != nil && l.keeper.lost.Load() {
		l.Drop()
		l.cfg.changed("lost")
	}
	if l.epoch != 0 {
		return false, nil
	}
	start := time.Now()
	epoch, err := l.cfg.Acquire(ctx)
	if errors.Is(err, pgx.ErrNoRows) {
		err = ErrStandby
	}
	if err != nil {
		return false, err
	}
	l.epoch = epoch
	l.keeper = l.startKeeper(ctx, epoch, start.Add(l.cfg.Duration))
	l.cfg.Log.Info("conduit: acquired lease", slog.Int64("epoch", epoch))
	l.cfg.changed("acquired")
	return true, nil
}

// Kept reports that the lease of epoch is held and its keeper has not found
// it lost.
func (l *Lease) Kept(epoch int64) bool {
	return epoch != 0 && l.epoch == epoch && (l.keeper == nil || !l.keeper.lost.Load())
}

// Held reports whether the lease is held and has not run out by this
// process's clock (Duration after the start of the last acquisition or
// renewal that succeeded). The keeper renews it long before that, unless
// the whole process was paused (SIGSTOP, a frozen VM) or starved for about
// Duration: then another instance may have taken over before the keeper
// could notice, so a call a former holder must not make (a publish) checks
// Held first.
func (l *Lease) Held() bool {
	k := l.keeper
	return l.epoch != 0 && k != nil && !k.lost.Load() && time.Now().Before(*k.until.Load())
}

// Drop stops keeping the lease, which is lost.
func (l *Lease) Drop() {
	if l.keeper != nil {
		l.keeper.stop()
		l.keeper = nil
	}
	l.epoch = 0
}

// Lose drops the lease, which a write of the client found lost (its
// epoch moved on).
func (l *Lease) Lose() {
	if l.epoch == 0 {
		return
	}
	l.Drop()
	l.cfg.changed("lost")
}

// Release stops keeping the lease and gives it up.
func (l *Lease) Release() {
	epoch := l.epoch
	l.Drop()
	if epoch == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.cfg.Release(ctx, epoch); err != nil {
		l.cfg.Log.Warn("conduit: release lease failed; it expires by itself", slog.Any("error", err))
	}
	l.cfg.changed("released")
}

// Batch is what the keeper needs of the batch in flight.
type Batch struct {
	// Cancel cancels the batch's context, with a cause.
	Cancel context.CancelCauseFunc
	// Release gives the batch's connection budget slot back; idempotent.
	Release func()
	// Data is the client's (for a projector, the checkpoint the batch
	// started from).
	Data any
}

// Call is one call watched by the keeper (a handler on an event, a
// publish).
type Call struct {
	Start time.Time
	Batch *Batch
	// Data is the client's (for a projector, the event and whether it is a
	// parked one).
	Data  any
	state atomic.Int32 // callRunning, callReturned or callOverran
	// Set by the keeper before it signals overran.
	overrun error
}

const (
	callRunning int32 = iota
	callReturned
	callOverran
)

// Watch runs fn, the call c, under the keeper's watch: if c overruns
// CallTimeout, Watch returns what LeaseConfig.Overrun returned for it,
// whatever fn returned. The lease must be held.
func (l *Lease) Watch(c *Call, fn func() error) error {
	k := l.keeper
	if c.Start.IsZero() {
		c.Start = time.Now()
	}
	k.call.Store(c)
	defer k.call.Store(nil)
	err := fn()
	if !c.state.CompareAndSwap(callRunning, callReturned) {
		<-k.overran
		return c.overrun
	}
	return err
}

// keeper keeps one epoch of a lease alive from a goroutine of its own.
type keeper struct {
	cfg     *LeaseConfig
	epoch   int64
	cancel  context.CancelFunc
	done    chan struct{}
	lost    atomic.Bool               // a renewal found the lease gone
	until   atomic.Pointer[time.Time] // when the lease runs out, by this process's clock
	call    atomic.Pointer[Call]      // the call in flight, if any
	overran chan struct{}             // the call in flight overran, and its failure is recorded
}

func (l *Lease) startKeeper(ctx context.Context, epoch int64, until time.Time) *keeper {
	ctx, cancel := context.WithCancel(ctx)
	k := &keeper{cfg: &l.cfg, epoch: epoch, cancel: cancel, done: make(chan struct{}), overran: make(chan struct{}, 1)}
	k.until.Store(&until)
	go k.run(ctx)
	return k
}

// stop stops the keeper and waits for it.
func (k *keeper) stop() {
	k.cancel()
	<-k.done
}

func (k *keeper) run(ctx context.Context) {
	defer close(k.done)
	cfg := k.cfg
	// It wakes at least this often, so that it sees an overrun in time
	// whatever CallTimeout is.
	tick := min(cfg.Duration/3, cfg.CallTimeout)
	renewAt := time.Now().Add(cfg.Duration / 3)
	for {
		next := min(time.Until(renewAt), tick)
		if c := k.call.Load(); c != nil && c.state.Load() == callRunning {
			next = min(next, time.Until(c.Start.Add(cfg.CallTimeout)))
		}
		t := time.NewTimer(max(next, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		c := k.call.Load()
		if c != nil && time.Since(c.Start) >= cfg.CallTimeout && c.state.CompareAndSwap(callRunning, callOverran) {
			k.overrun(ctx, c)
		}
		if time.Now().Before(renewAt) {
			continue
		}
		if c = k.call.Load(); c != nil && c.state.Load() == callOverran && time.Since(c.Start) >= 2*cfg.CallTimeout {
			if c.Batch.Release != nil {
				c.Batch.Release() // stuck: let other workers have the slot,
			}
			renewAt = time.Now().Add(tick) // and no renewal until it returns
			continue
		}
		err := k.renew(ctx, c)
		switch {
		case errors.Is(err, pgx.ErrNoRows) || errors.Is(err, ErrLeaseLost):
			cfg.Log.Warn("conduit: lost the lease", slog.Int64("epoch", k.epoch))
			k.lost.Store(true)
			if c := k.call.Load(); c != nil {
				c.Batch.Cancel(ErrLeaseLost)
			}
			return
		case err != nil:
			renewAt = time.Now().Add(cfg.Duration / 10) // soon again
		default:
			renewAt = time.Now().Add(cfg.Duration / 3)
		}
	}
}

// renew extends the lease; c is the call in flight, if any.
func (k *keeper) renew(ctx context.Context, c *Call) error {
	// Bounded: a renewal queued behind a lock (a rebuild waiting for the
	// batch) must not keep the keeper from watching the call.
	ctx, cancel := context.WithTimeout(ctx, k.cfg.Duration/3)
	defer cancel()
	start := time.Now()
	err := k.cfg.Renew(ctx, k.epoch, c)
	if err == nil {
		until := start.Add(k.cfg.Duration)
		k.until.Store(&until)
	}
	return err
}

// overrun fails c through the client, bounded like a renewal, then tells
// the call.
func (k *keeper) overrun(ctx context.Context, c *Call) {
	ctx, cancel := context.WithTimeout(ctx, k.cfg.Duration/3)
	defer cancel()
	c.overrun = k.cfg.Overrun(ctx, k.epoch, c)
	k.overran <- struct{}{}
}
