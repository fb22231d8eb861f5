package conduit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit/internal/dbgen"
	"github.com/conduit-es/conduit/internal/engine"
)

// The projector is a client of the engine's lease (internal/engine.Lease):
// the lease keeper renews the projection's lease from a goroutine of its
// own, and watches the handler in flight. This file holds what the keeper
// needs of a projector: its lease statements, and what a handler that
// overran HandlerTimeout costs (a counted failed attempt, or for a parked
// event being retried, parking it again).

var (
	errLeaseLost = engine.ErrLeaseLost
	errStandby   = engine.ErrStandby
)

// newLease returns the projection's lease, not held.
func (p *Projector) newLease() *engine.Lease {
	q := p.store.queries
	return engine.NewLease(engine.LeaseConfig{
		Duration:    p.cfg.LeaseDuration,
		CallTimeout: p.cfg.HandlerTimeout,
		Acquire: func(ctx context.Context) (int64, error) {
			return q.ProjectionAcquire(ctx, dbgen.ProjectionAcquireParams{
				Owner: p.cfg.InstanceID, LeaseSeconds: p.cfg.LeaseDuration.Seconds(), Name: p.name,
			})
		},
		Renew: p.renew,
		Release: func(ctx context.Context, epoch int64) error {
			return q.ProjectionRelease(ctx, dbgen.ProjectionReleaseParams{Name: p.name, Owner: p.cfg.InstanceID, Epoch: epoch})
		},
		Overrun:  p.overrun,
		Log:      p.log,
		OnChange: func(change string) { p.store.tel.leaseChange("projector", p.name, change) },
	})
}

// handlerCall is the engine.Call data of a handler call.
type handlerCall struct {
	event  Event
	parked bool // a parked event being retried
	batch  bool // ApplyBatch with a whole batch: no one event to blame
}

// watchedCall is a handler call and its data in one allocation: the
// call's Data points at data.
type watchedCall struct {
	call engine.Call
	data handlerCall
}

// newCall returns a call of h starting now.
func newCall(b *engine.Batch, h handlerCall) *engine.Call {
	w := &watchedCall{call: engine.Call{Start: time.Now(), Batch: b}, data: h}
	w.call.Data = &w.data
	return &w.call
}

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

// renew extends the lease; c is the handler in flight, if any (the
// projection is applying). Its batch's data is the checkpoint it started
// from.
func (p *Projector) renew(ctx context.Context, epoch int64, c *engine.Call) error {
	arg := dbgen.ProjectionRenewParams{
		LeaseSeconds: p.cfg.LeaseDuration.Seconds(), Name: p.name, Owner: p.cfg.InstanceID, Epoch: epoch,
	}
	if c != nil {
		from := c.Batch.Data.(Position)
		arg.Applying, arg.FromTx, arg.FromPosition = true, from.TransactionID, from.GlobalPosition
	}
	_, err := p.store.queries.ProjectionRenew(ctx, arg)
	return err
}

// overrun fails c, a handler that ran longer than HandlerTimeout: it
// cancels its batch and counts the failure (for a parked event being
// retried, parks it again).
func (p *Projector) overrun(ctx context.Context, epoch int64, c *engine.Call) error {
	h := c.Data.(*handlerCall)
	o := &handlerOverrun{err: fmt.Errorf("%w (%s)", errHandlerTimeout, p.cfg.HandlerTimeout), parked: h.parked}
	c.Batch.Cancel(o)
	switch {
	case h.batch: // the batch is isolated event by event, each watched alone
	case h.parked:
		o.countErr = p.repark(ctx, p.store.queries, h.event, o.err)
	default:
		o.attempts, o.countErr = p.countFailure(ctx, epoch, h.event, o.err)
	}
	return o
}

// apply runs the projection's handler on e under the keeper's watch: a
// handler that overruns HandlerTimeout returns a *handlerOverrun, whatever
// it returned itself.
func (p *Projector) apply(ctx context.Context, tx pgx.Tx, e Event, b *engine.Batch, parked bool) error {
	c := newCall(b, handlerCall{event: e, parked: parked})
	if bp, ok := p.projection.(BatchProjection); ok {
		return p.lease.Watch(c, func() error { return bp.ApplyBatch(ctx, tx, []Event{e}) })
	}
	return p.lease.Watch(c, func() error { return p.projection.Apply(ctx, tx, e) })
}

// applyBatch runs bp.ApplyBatch on events under the keeper's watch, as
// apply does for one event; an overrun counts no attempt at any event.
func (p *Projector) applyBatch(ctx context.Context, tx pgx.Tx, bp BatchProjection, events []Event, b *engine.Batch) error {
	c := newCall(b, handlerCall{event: events[0], batch: true})
	return p.lease.Watch(c, func() error { return bp.ApplyBatch(ctx, tx, events) })
}
