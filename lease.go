package conduit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit/internal/dbgen"
)

// leaseKeeper keeps one epoch of a projector's lease alive from a goroutine
// of its own, on short statements of its own: it renews the lease every
// LeaseDuration/3 whatever the projector is doing (waiting, applying a batch
// longer than the lease, waiting for a connection of the projector budget).
// So the status never says stopped while its owner works, and a standby
// takes over only from an owner that stopped renewing: one that died, was
// paused (SIGSTOP, a frozen VM: the keeper is paused with it) or is cut off.
//
// It also watches the handler in flight. One that runs longer than
// HandlerTimeout overran: the keeper cancels its batch (the handler's
// context) and counts the failure itself, at once, whether or not the
// handler ever returns. One still running after twice HandlerTimeout is
// stuck: the keeper gives its batch's slot of the projectors' connection
// budget back (other projectors of the Store go on; the stuck batch keeps
// its pool connection) and stops renewing the lease until it returns, so
// that another instance takes over once the lease expires. A keeper that
// finds the lease lost cancels the batch in flight and ends.
type leaseKeeper struct {
	p       *Projector
	epoch   int64
	cancel  context.CancelFunc
	done    chan struct{}
	lost    atomic.Bool                 // a renewal found the lease gone
	call    atomic.Pointer[handlerCall] // the handler in flight, if any
	overran chan struct{}               // the call in flight overran, and its failure is counted
}

// batchRun is what the keeper needs of the batch in flight.
type batchRun struct {
	from    Position // its checkpoint when it started
	cancel  context.CancelCauseFunc
	release func() // gives its connection budget slot back; idempotent
}

// handlerCall is one call of the projection's handler, watched by the keeper.
type handlerCall struct {
	event  Event
	start  time.Time
	batch  *batchRun
	parked bool         // a parked event being retried
	state  atomic.Int32 // callRunning, callReturned or callOverran
	// Set by the keeper before it signals overran.
	overrun *handlerOverrun
}

const (
	callRunning int32 = iota
	callReturned
	callOverran
)

// errHandlerTimeout is what a handler that overran HandlerTimeout failed with.
var errHandlerTimeout = errors.New("handler ran longer than ProjectorConfig.HandlerTimeout")

// handlerOverrun is the failure of a handler that overran HandlerTimeout,
// counted by the keeper: attempts is the event's failed attempts so far
// (countErr why they could not be counted), or for a parked event being
// retried, countErr is why it could not be parked again.
type handlerOverrun struct {
	err      error
	attempts int32
	countErr error
	parked   bool
}

func (o *handlerOverrun) Error() string { return o.err.Error() }
func (o *handlerOverrun) Unwrap() error { return o.err }

// startKeeper starts keeping epoch's lease until stop, or until a renewal
// finds it lost.
func (p *Projector) startKeeper(ctx context.Context, epoch int64) *leaseKeeper {
	ctx, cancel := context.WithCancel(ctx)
	k := &leaseKeeper{p: p, epoch: epoch, cancel: cancel, done: make(chan struct{}), overran: make(chan struct{}, 1)}
	go k.run(ctx)
	return k
}

// stop stops the keeper and waits for it.
func (k *leaseKeeper) stop() {
	k.cancel()
	<-k.done
}

func (k *leaseKeeper) run(ctx context.Context) {
	defer close(k.done)
	cfg := &k.p.cfg
	// It wakes at least this often, so that it sees a handler overrun in
	// time whatever HandlerTimeout is.
	tick := min(cfg.LeaseDuration/3, cfg.HandlerTimeout)
	renewAt := time.Now().Add(cfg.LeaseDuration / 3)
	for {
		next := min(time.Until(renewAt), tick)
		if c := k.call.Load(); c != nil && c.state.Load() == callRunning {
			next = min(next, time.Until(c.start.Add(cfg.HandlerTimeout)))
		}
		t := time.NewTimer(max(next, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		c := k.call.Load()
		if c != nil && time.Since(c.start) >= cfg.HandlerTimeout && c.state.CompareAndSwap(callRunning, callOverran) {
			k.overrun(ctx, c)
		}
		if time.Now().Before(renewAt) {
			continue
		}
		if c = k.call.Load(); c != nil && c.state.Load() == callOverran && time.Since(c.start) >= 2*cfg.HandlerTimeout {
			c.batch.release()              // stuck: let other projectors have the slot,
			renewAt = time.Now().Add(tick) // and no renewal until it returns
			continue
		}
		err := k.renew(ctx, c)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			k.p.log.Warn("conduit: projector lost its lease", slog.Int64("epoch", k.epoch))
			k.lost.Store(true)
			if c := k.call.Load(); c != nil {
				c.batch.cancel(errLeaseLost)
			}
			return
		case err != nil:
			renewAt = time.Now().Add(cfg.LeaseDuration / 10) // soon again
		default:
			renewAt = time.Now().Add(cfg.LeaseDuration / 3)
		}
	}
}

// renew extends the lease; c is the handler in flight, if any (the
// projection is applying).
func (k *leaseKeeper) renew(ctx context.Context, c *handlerCall) error {
	p := k.p
	// Bounded: a renewal queued behind a rebuild waiting for the batch
	// must not keep the keeper from watching the handler.
	ctx, cancel := context.WithTimeout(ctx, p.cfg.LeaseDuration/3)
	defer cancel()
	arg := dbgen.ProjectionRenewParams{
		LeaseSeconds: p.cfg.LeaseDuration.Seconds(), Name: p.name, Owner: p.cfg.InstanceID, Epoch: k.epoch,
	}
	if c != nil {
		arg.Applying, arg.FromTx, arg.FromPosition = true, c.batch.from.TransactionID, c.batch.from.GlobalPosition
	}
	_, err := p.store.queries.ProjectionRenew(ctx, arg)
	return err
}

// overrun fails c, a handler that ran longer than HandlerTimeout: it
// cancels its batch and counts the failure (for a parked event being
// retried, parks it again), then tells the batch.
func (k *leaseKeeper) overrun(ctx context.Context, c *handlerCall) {
	p := k.p
	o := &handlerOverrun{err: fmt.Errorf("%w (%s)", errHandlerTimeout, p.cfg.HandlerTimeout), parked: c.parked}
	c.batch.cancel(o)
	ctx, cancel := context.WithTimeout(ctx, p.cfg.LeaseDuration/3)
	defer cancel()
	if c.parked {
		o.countErr = p.repark(ctx, p.store.queries, c.event, o.err)
	} else {
		o.attempts, o.countErr = p.countFailure(ctx, k.epoch, c.event, o.err)
	}
	c.overrun = o
	k.overran <- struct{}{}
}

// apply runs the projection's handler on e under the keeper's watch: a
// handler that overruns HandlerTimeout returns a *handlerOverrun, whatever
// it returned itself.
func (p *Projector) apply(ctx context.Context, tx pgx.Tx, e Event, b *batchRun, parked bool) error {
	k := p.keeper
	c := &handlerCall{event: e, start: time.Now(), batch: b, parked: parked}
	k.call.Store(c)
	defer k.call.Store(nil)
	err := p.projection.Apply(ctx, tx, e)
	if !c.state.CompareAndSwap(callRunning, callReturned) {
		<-k.overran
		return c.overrun
	}
	return err
}
