package conduit

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// Projection turns events into rows of read tables. Registered in
// Config.Projections it runs synchronously, inside every append's
// transaction; run by a Projector it follows the global log asynchronously.
//
// Apply must write only through tx; an error rolls back the whole
// transaction (the append, or the projector's batch).
type Projection interface {
	// Name identifies the projection (checkpoints, status, errors). Stable.
	Name() string
	// Apply handles one event. Events of types it does not handle must be
	// ignored (return nil). Run by a Projector, a call that overruns
	// ProjectorConfig.HandlerTimeout has ctx cancelled and fails.
	Apply(ctx context.Context, tx pgx.Tx, e Event) error
}

// BatchProjection is a Projection that takes a projector's whole batch of
// events at once, so that its writes can go to the database in one round
// trip (a multi-row upsert from arrays through unnest, a pgx.Batch sent
// once, COPY into a staging table) instead of one per event. A Projector
// calls ApplyBatch, never Apply: with the events of a batch it handles (see
// EventTypeFilter), in log order, within the batch's transaction, which
// also moves the checkpoint past them.
//
// When ApplyBatch fails, the projector rolls the batch back and applies its
// events again one at a time, each by ApplyBatch with a single event, to
// find the one that fails: that event alone then meets the poison policy
// (ProjectorConfig.Poison), and the events before it commit. The batch as a
// whole counts no attempt, so a batch that fails only as a whole (two
// events upserting one key in one statement, say) goes through event by
// event. ProjectorConfig.HandlerTimeout bounds each call, batch or single.
//
// Apply serves synchronous use (Config.Projections); it may simply be
// ApplyBatch(ctx, tx, []Event{e}).
type BatchProjection interface {
	Projection
	ApplyBatch(ctx context.Context, tx pgx.Tx, events []Event) error
}

// EventTypeFilter is implemented by projections that handle only some event
// types. An async projector then fetches the data of only those, and applies
// only those, while still advancing its checkpoint past the others. An empty
// list means every type.
type EventTypeFilter interface {
	EventTypes() []string
}

// ReadTableOwner is implemented by projections that declare the read tables
// they write. Rebuilding the projection truncates them.
type ReadTableOwner interface {
	ReadTables() []string
}

// Router is a Projection that dispatches events by type to typed handlers,
// so a projection is a list of functions instead of a switch. Unknown types
// are ignored. Build it with NewRouter, On and OnWrite; it is not safe to
// add handlers once it is in use.
//
// A Router is a BatchProjection: a projector hands it a whole batch, which
// it dispatches event by event, in order. The statements that OnWrite
// handlers queue go to the database together, in one round trip per run of
// such handlers (pgx pipelining), instead of one per statement.
type Router struct {
	name     string
	tables   []string
	handlers map[string]routerHandler
	types    []string
}

// routerHandler is an On handler (run) or an OnWrite handler (queue).
type routerHandler struct {
	run   func(ctx context.Context, tx pgx.Tx, e Event) error
	queue func(ctx context.Context, e Event, b *pgx.Batch) error
}

// NewRouter returns an empty Router named name, owning the given read tables
// (schema-qualified names; used by rebuilds).
func NewRouter(name string, readTables ...string) *Router {
	return &Router{name: name, tables: readTables, handlers: map[string]routerHandler{}}
}

// On registers fn for events of eventType, with the event's data decoded
// from JSON into a T. A decoding failure is returned as the projection's
// error. Registering a type twice panics: it is a programming error.
func On[T any](r *Router, eventType string, fn func(ctx context.Context, tx pgx.Tx, e Event, data T) error) *Router {
	r.register(eventType, routerHandler{run: func(ctx context.Context, tx pgx.Tx, e Event) error {
		data, err := decodeData[T](e)
		if err != nil {
			return err
		}
		return fn(ctx, tx, e, data)
	}})
	return r
}

// OnWrite registers fn for events of eventType, as On does, for a handler
// that only writes: it queues its statements into b (b.Queue(sql,
// args...)) instead of running them, and reads nothing back (ctx serves
// Table, and values of your own). The Router
// sends the statements queued for consecutive events in one round trip,
// before any On handler runs, so statements still run in event order; a
// failing statement fails the batch, which the projector then applies one
// event at a time to find the event at fault (see BatchProjection).
func OnWrite[T any](r *Router, eventType string, fn func(ctx context.Context, e Event, data T, b *pgx.Batch) error) *Router {
	r.register(eventType, routerHandler{queue: func(ctx context.Context, e Event, b *pgx.Batch) error {
		data, err := decodeData[T](e)
		if err != nil {
			return err
		}
		return fn(ctx, e, data, b)
	}})
	return r
}

func (r *Router) register(eventType string, h routerHandler) {
	if _, dup := r.handlers[eventType]; dup {
		panic(fmt.Sprintf("conduit: router %q: event type %q registered twice", r.name, eventType))
	}
	r.handlers[eventType] = h
	r.types = append(r.types, eventType)
}

// decodeData decodes e's data from JSON into a T.
func decodeData[T any](e Event) (T, error) {
	var data T
	if err := json.Unmarshal(e.Data, &data); err != nil {
		return data, fmt.Errorf("decode %s data: %w", e.Type, err)
	}
	return data, nil
}

// Name implements Projection.
func (r *Router) Name() string { return r.name }

// Apply implements Projection.
func (r *Router) Apply(ctx context.Context, tx pgx.Tx, e Event) error {
	return r.ApplyBatch(ctx, tx, []Event{e})
}

// ApplyBatch implements BatchProjection: each event to its handler, in
// order; the statements OnWrite handlers queue for consecutive events are
// sent together.
func (r *Router) ApplyBatch(ctx context.Context, tx pgx.Tx, events []Event) error {
	var queued pgx.Batch
	for _, e := range events {
		h, ok := r.handlers[e.Type]
		switch {
		case !ok:
		case h.queue != nil:
			if err := h.queue(ctx, e, &queued); err != nil {
				return err
			}
		default:
			if err := sendQueued(ctx, tx, &queued); err != nil {
				return err
			}
			if err := h.run(ctx, tx, e); err != nil {
				return err
			}
		}
	}
	return sendQueued(ctx, tx, &queued)
}

// sendQueued sends the queued statements in one round trip and empties b.
func sendQueued(ctx context.Context, tx pgx.Tx, b *pgx.Batch) error {
	if b.Len() == 0 {
		return nil
	}
	err := tx.SendBatch(ctx, b).Close()
	*b = pgx.Batch{}
	return err
}

// EventTypes implements EventTypeFilter: the types with a handler.
func (r *Router) EventTypes() []string { return slices.Clone(r.types) }

// ReadTables implements ReadTableOwner.
func (r *Router) ReadTables() []string { return slices.Clone(r.tables) }

// applyProjections runs each projection on each event, in registration
// order per event, wrapping a failure with the projection's name.
func applyProjections(ctx context.Context, tx pgx.Tx, projections []Projection, events []Event) error {
	for _, e := range events {
		for _, p := range projections {
			if err := p.Apply(ctx, tx, e); err != nil {
				return &ProjectionError{Projection: p.Name(), Event: e, Err: err}
			}
		}
	}
	return nil
}
