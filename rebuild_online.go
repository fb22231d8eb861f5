package conduit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit/internal/dberr"
	"github.com/conduit-es/conduit/internal/dbgen"
	"github.com/conduit-es/conduit/internal/engine"
)

// An online rebuild replays a projection into shadow copies of its read
// tables (in schema conduit_shadow) while the live tables keep serving, then
// swaps the copies in, in one short transaction, once the replay has caught
// up with the live checkpoint. The projector that holds the lease does the
// replay, one shadow batch after each live batch, so the live projection
// never stops; a shadow batch that fails is recorded in the status and
// retried with backoff, and never holds the live projection back.

// swapLockTimeout bounds how long the swap waits for readers of the live
// tables, and so how long readers queue behind it before it gives up (it
// is tried again later). A reader queued behind the swap waits for this at
// most, plus the swap's own short transaction once it has its locks (renames
// and a commit, a few milliseconds): half of the 100ms that readers may be
// blocked, the other half left for the swap itself (conduit-bench's online
// workload measured readers waiting up to 115ms with a lock timeout of
// 100ms, when the swap still prepared under its locks).
const swapLockTimeout = 50 * time.Millisecond

// swapRetryFirst and swapRetryLimit space the tries of a swap that timed
// out (readers held a live table): each try makes readers queue for up to
// swapLockTimeout, so tries back to back would keep them waiting all the
// time a long reader holds a table.
const (
	swapRetryFirst = 250 * time.Millisecond
	swapRetryLimit = 5 * time.Second
)

// Table returns the table a handler writes for read table name, as its
// projection declares it (ReadTableOwner, NewRouter): name itself, or during
// an online rebuild's replay (see Store.RebuildProjectionOnline) its shadow
// copy. A projection that is rebuilt online must name its read tables
// through Table in every statement:
//
//	_, err := tx.Exec(ctx, `INSERT INTO `+conduit.Table(ctx, "shop.orders")+` …`)
func Table(ctx context.Context, name string) string {
	if m, ok := ctx.Value(shadowTablesKey{}).(map[string]string); ok {
		if shadow, ok := m[name]; ok {
			return shadow
		}
	}
	return name
}

type shadowTablesKey struct{}

// RebuildProjectionOnline rebuilds the projection without downtime, by
// calling the SQL function conduit.rebuild_projection_online (which you can
// also call from psql): it creates an empty shadow copy of each read table
// the projection declares (CREATE TABLE … (LIKE … INCLUDING ALL)); the
// projector's running instance replays the log into them, between its live
// batches, and swaps them in for the live tables in one short transaction
// once the replay has caught up. Readers see the old tables, complete, until
// the swap, and the new ones after it; the swap makes them wait about 100ms
// at most: it waits 50ms at most for their locks (lock_timeout: a swap that
// would wait longer is tried again later, with backoff), then holds the
// tables for its own short transaction.
// Status shows the progress (ProjectionStatus.OnlineRebuild).
//
// The handlers must write through Table(ctx, name). The new tables carry
// the live ones' indexes and constraints (under the live names, during the
// replay too), defaults, sequences, comments, owner and privileges. What the
// swap cannot replace soundly is refused before anything is made, with
// ErrCannotRebuildOnline naming the table and the reason: a read table the
// calling role does not own (nor is a member of its owner), a view or
// foreign key depending on it, a trigger, foreign key, policy or
// publication of its own (see README, Rebuild without downtime). The
// projector checks its own role likewise before it replays anything (the
// status shows the error). Calling it again restarts the replay; a call
// made while a projector's batch holds the projection (a swap, say) waits
// for that batch's transaction, then checks the tables as it left them.
// ErrNotFound if the projection never ran.
func (s *Store) RebuildProjectionOnline(ctx context.Context, name string) error {
	if checkName("projection", name) != nil {
		return fmt.Errorf("conduit: rebuild %q online: %w", name, ErrNotFound)
	}
	// The call is one statement: one that the server rolled back after a
	// deadlock or a serialization failure (with the projector's batch, say,
	// or a rebuild called at the same time) did nothing, and goes again.
	wait := engine.NewBackoff(10*time.Millisecond, 500*time.Millisecond)
	for attempt := 1; ; attempt++ {
		err := s.queries.ProjectionRebuildOnline(ctx, name)
		if err == nil {
			break
		}
		if attempt == 5 || !dberr.IsTransient(err) || !dberr.RolledBack(err) {
			return s.dbError(ctx, err, fmt.Sprintf("rebuild %q online", name))
		}
		engine.Idle(ctx, nil, wait.Next())
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("conduit: rebuild %q online: %w", name, err)
		}
	}
	s.Notify()
	return nil
}

// OnlineRebuild is the progress of an online rebuild.
type OnlineRebuild struct {
	Started time.Time
	// Replayed counts the events replayed into the shadow tables so far,
	// EventsPerSecond their rate since Started.
	Replayed        int64
	EventsPerSecond float64
	// Left estimates the time left, from the global positions still to
	// replay at the rate so far; -1 while unknown.
	Left time.Duration
	// Error is why the last shadow batch failed ("" if it did not); the
	// projector retries it with backoff.
	Error string
}

// shadowFailure is a projection's error in a shadow batch.
type shadowFailure struct{ err error }

func (f *shadowFailure) Error() string { return f.err.Error() }
func (f *shadowFailure) Unwrap() error { return f.err }

// shadowStep runs a shadow batch if an online rebuild is under way and not
// backing off after a failure; it reports whether the rebuild goes on (so
// the projector keeps stepping without idling).
func (p *Projector) shadowStep(ctx context.Context) (bool, error) {
	if time.Now().Before(p.shadowRetryAt) {
		return false, nil
	}
	more, err := p.shadowBatch(ctx)
	var failed *shadowFailure
	switch {
	case errors.As(err, &failed):
		wait := p.shadowBackoff.Next()
		p.shadowRetryAt = time.Now().Add(wait)
		p.log.Warn("conduit: online rebuild: shadow batch failed; retrying", slog.Any("error", failed.err),
			slog.Duration("retry_in", wait))
		if err := p.store.queries.ProjectionShadowFailed(ctx, dbgen.ProjectionShadowFailedParams{
			Error: failed.err.Error(), Name: p.name, Owner: p.cfg.InstanceID, Epoch: p.lease.Epoch(),
		}); err != nil {
			return false, err
		}
		return false, nil
	case err != nil:
		return false, err
	}
	p.shadowBackoff.Reset()
	return more, nil
}

// shadowBatch replays up to BatchSize events into the shadow tables, not
// past the live checkpoint, in one transaction with the shadow checkpoint;
// at the live checkpoint it swaps the shadow tables in instead. It reports
// whether the rebuild goes on.
func (p *Projector) shadowBatch(ctx context.Context) (more bool, err error) {
	release, err := p.store.takeProjectorConn(ctx)
	if err != nil {
		return false, err
	}
	defer release()
	bctx, cancel := context.WithTimeout(ctx, p.cfg.HandlerTimeout)
	defer cancel()
	var swapStart time.Time // set when the transaction swaps
	err = pgx.BeginFunc(ctx, p.store.pool, func(tx pgx.Tx) error {
		ctx := bctx
		q := p.store.queries.WithTx(tx)
		row, err := q.ProjectionLockForBatch(ctx, dbgen.ProjectionLockForBatchParams{
			IdleTimeout: strconv.FormatInt(p.batchIdleTimeout().Milliseconds(), 10),
			Durable:     p.cfg.DurableCommit,
			Name:        p.name, Owner: p.cfg.InstanceID, Epoch: p.lease.Epoch(),
		})
		if errors.Is(err, pgx.ErrNoRows) {
			return errLeaseLost
		}
		if err != nil || !row.ShadowActive {
			return err
		}
		more = true
		live := Position{TransactionID: row.CheckpointTx, GlobalPosition: row.CheckpointPosition}
		from := Position{TransactionID: row.ShadowCheckpointTx, GlobalPosition: row.ShadowCheckpointPosition}
		if from == (Position{}) {
			// Before the first shadow batch: can this projector's role
			// swap the tables in? Refused now, not after the replay.
			if err := q.ProjectionCheckOnline(ctx, p.name); err != nil {
				return shadowSwapError(err)
			}
		}
		switch {
		case live.Before(from):
			// The live projection was rebuilt (truncated) since: the
			// replay starts over, or it would be ahead of the tables.
			p.log.Info("conduit: online rebuild restarted: the projection was rebuilt meanwhile")
			return q.ProjectionRebuildOnline(ctx, p.name)
		case from == live:
			start := time.Now()
			if err := q.ProjectionShadowSwap(ctx, dbgen.ProjectionShadowSwapParams{
				LockTimeout: strconv.FormatInt(swapLockTimeout.Milliseconds(), 10), Name: p.name,
			}); err != nil {
				if dberr.IsLockTimeout(err) || databaseFault(err) {
					return err
				}
				// A view or foreign key made on a live table during the
				// replay, a missing privilege: reported, never in the live
				// projection's way.
				return shadowSwapError(err)
			}
			more, swapStart = false, start
			return nil
		}
		events, err := p.readBatch(ctx, q, from, p.cfg.BatchSize)
		if err != nil {
			return err
		}
		events = events[:countThrough(events, live)]
		tables := make(map[string]string, len(row.ReadTables))
		for i, t := range row.ReadTables {
			tables[t] = row.ShadowTables[i]
		}
		sctx := context.WithValue(ctx, shadowTablesKey{}, tables)
		handled := make([]Event, 0, len(events))
		for _, e := range events {
			if p.handles(e.Type) {
				handled = append(handled, e)
			}
		}
		if err := p.applyShadow(sctx, tx, handled); err != nil {
			return err
		}
		cp := from
		if len(events) > 0 {
			cp = events[len(events)-1].Position
		}
		_, err = q.ProjectionShadowCheckpointSave(ctx, dbgen.ProjectionShadowCheckpointSaveParams{
			CheckpointTx: cp.TransactionID, CheckpointPosition: cp.GlobalPosition, Applied: int64(len(handled)),
			Name: p.name, Owner: p.cfg.InstanceID, Epoch: p.lease.Epoch(), ShadowTables: row.ShadowTables,
		})
		if errors.Is(err, pgx.ErrNoRows) {
			return errLeaseLost
		}
		return err
	})
	if err == nil && !swapStart.IsZero() {
		p.swapBackoff.Reset()
		// From the swap's call to its commit: more than a reader queued
		// behind it can have waited (the swap prepares before it locks).
		p.log.Info("conduit: online rebuild swapped in", slog.Duration("swap", time.Since(swapStart)))
	}
	if dberr.IsLockTimeout(err) {
		// Given up after swapLockTimeout: readers queued behind the swap
		// go on. Tried again later (the live projection goes on meanwhile,
		// and the replay catches up again before the next try).
		wait := p.swapBackoff.Next()
		p.shadowRetryAt = time.Now().Add(wait)
		p.log.Info("conduit: online rebuild: the swap waited for readers longer than its lock timeout; trying again",
			slog.Duration("retry_in", wait))
		return false, nil
	}
	return more, err
}

// shadowSwapError is err from the check or the swap of an online rebuild,
// as a *shadowFailure (ErrCannotRebuildOnline when refused).
func shadowSwapError(err error) error {
	if dberr.Classify(err) == dberr.OnlineRebuildRefused {
		err = fmt.Errorf("%w: %w", ErrCannotRebuildOnline, err)
	}
	return &shadowFailure{err: fmt.Errorf("swap: %w", err)}
}

// applyShadow applies events to the shadow tables (ctx maps them). A
// failure that is not the database's is a *shadowFailure.
func (p *Projector) applyShadow(ctx context.Context, tx pgx.Tx, events []Event) error {
	var err error
	if bp, ok := p.projection.(BatchProjection); ok {
		if len(events) > 0 {
			err = bp.ApplyBatch(ctx, tx, events)
		}
	} else {
		for _, e := range events {
			if err = p.projection.Apply(ctx, tx, e); err != nil {
				err = &ProjectionError{Projection: p.name, Event: e, Err: err}
				break
			}
		}
	}
	if err != nil && !databaseFault(err) {
		return &shadowFailure{err: err}
	}
	return err
}
