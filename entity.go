package conduit

import (
	"context"
	"errors"
	"fmt"
	"iter"

	"github.com/jackc/pgx/v5"
)

// Default and limit of Entity.MaxAttempts.
const (
	// EntityMaxAttemptsDefault is the default Entity.MaxAttempts.
	EntityMaxAttemptsDefault = 5
	// EntityMaxAttemptsLimit is the largest Entity.MaxAttempts.
	EntityMaxAttemptsLimit = 100
)

// Entity folds a stream into a state value of type S: the event-sourced
// entity (aggregate) pattern. Load rebuilds the state; Update loads,
// decides, and appends the decision at the version it loaded, retrying on a
// conflict.
//
//	var accounts = conduit.Entity[Account]{Evolve: Account.apply}
//	acct, version, err := accounts.Load(ctx, store, "account-42")
type Entity[S any] struct {
	// Initial returns the state of a stream with no events. Defaults to
	// the zero S.
	Initial func() S
	// Evolve returns the state after one event. Required.
	Evolve func(state S, e Event) (S, error)
	// MaxAttempts bounds Update's tries when concurrent writers conflict:
	// 1 to EntityMaxAttemptsLimit (100); out of range, Update returns a
	// *ConfigError. Defaults to EntityMaxAttemptsDefault (5).
	MaxAttempts int
}

// Load folds the stream's events into a state and returns it with the
// stream's version (0 for a stream with no events).
func (en Entity[S]) Load(ctx context.Context, store *Store, streamID string) (S, int64, error) {
	return en.load(store.ReadStream(ctx, streamID, 1), streamID)
}

// LoadTx is Load inside the caller's transaction.
func (en Entity[S]) LoadTx(ctx context.Context, store *Store, tx pgx.Tx, streamID string) (S, int64, error) {
	return en.load(store.ReadStreamTx(ctx, tx, streamID, 1), streamID)
}

func (en Entity[S]) load(events iter.Seq2[Event, error], streamID string) (S, int64, error) {
	var state S
	if en.Initial != nil {
		state = en.Initial()
	}
	if en.Evolve == nil {
		return state, 0, errors.New("conduit: Entity.Evolve is nil")
	}
	var version int64
	for e, err := range events {
		if err != nil {
			return state, 0, err
		}
		if state, err = en.Evolve(state, e); err != nil {
			return state, 0, fmt.Errorf("conduit: evolve stream %q at version %d: %w", streamID, e.StreamVersion, err)
		}
		version = e.StreamVersion
	}
	return state, version, nil
}

// Update loads the state, asks decide for new events and appends them with
// the loaded version as the expected version. If another writer got there
// first, it reloads and decides again, up to MaxAttempts times; then it
// returns the last *VersionConflictError. A decide that returns no events
// appends nothing and returns the current version. An error from decide is
// returned as is. decide may run more than once: keep it free of side
// effects, and make its events with NewEvent so that each decision has its
// own ids.
func (en Entity[S]) Update(ctx context.Context, store *Store, streamID string, decide func(state S) ([]EventData, error)) (AppendResult, error) {
	return en.update(decide, func() (S, int64, error) { return en.Load(ctx, store, streamID) },
		func(version int64, events []EventData) (AppendResult, error) {
			return store.Append(ctx, streamID, Exactly(version), events...)
		})
}

// UpdateTx is Update inside the caller's transaction: the load, the
// decision and the append see the transaction's own writes and commit with
// it. A conflict leaves tx usable, so UpdateTx reloads and decides again
// within it (under READ COMMITTED each reload sees the appends committed
// meanwhile; under REPEATABLE READ a concurrent append ends the transaction
// with a serialization failure instead: retry the transaction). If tx wrote
// before UpdateTx and a younger transaction appends to the stream meanwhile,
// it returns *TransactionOrderError: retry the transaction. Call
// store.Notify after the commit, or run it in store.InTx.
func (en Entity[S]) UpdateTx(ctx context.Context, store *Store, tx pgx.Tx, streamID string, decide func(state S) ([]EventData, error)) (AppendResult, error) {
	return en.update(decide, func() (S, int64, error) { return en.LoadTx(ctx, store, tx, streamID) },
		func(version int64, events []EventData) (AppendResult, error) {
			return store.AppendTx(ctx, tx, streamID, Exactly(version), events...)
		})
}

func (en Entity[S]) update(decide func(S) ([]EventData, error), load func() (S, int64, error),
	appendAt func(version int64, events []EventData) (AppendResult, error)) (AppendResult, error) {
	attempts := en.MaxAttempts
	setDefault(&attempts, EntityMaxAttemptsDefault)
	if err := checkRanges(countRange("Entity.MaxAttempts", attempts, 1, EntityMaxAttemptsLimit)); err != nil {
		return AppendResult{}, err
	}
	var err error
	for range attempts {
		var (
			state   S
			version int64
			events  []EventData
		)
		if state, version, err = load(); err != nil {
			return AppendResult{}, err
		}
		if events, err = decide(state); err != nil {
			return AppendResult{}, err
		}
		if len(events) == 0 {
			return AppendResult{Version: version}, nil
		}
		var res AppendResult
		res, err = appendAt(version, events)
		if !errors.Is(err, ErrVersionConflict) {
			return res, err
		}
	}
	return AppendResult{}, err
}
