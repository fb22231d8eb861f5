// Package dbgen is the database access code sqlc generates from db/queries
// and db/migrations (make generate; never edit the generated files). This
// file is not generated: it adds row-by-row twins of the :many queries that
// read events, for the read paths that stream. sqlc's :many methods build a
// page's slice before they return it; these run the same generated query
// text, decode each row (see EventDecoder: from the wire, or scanned as the
// generated method does), and hand it to fn as it comes off the wire, so a
// reader converts each row once and holds no page.
// The connection is busy until they return: fn must not use it. An error
// from fn ends the read (the rest of the result is discarded) and is
// returned.
package dbgen

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// EventListAllEach is EventListAll, row by row.
func (q *Queries) EventListAllEach(ctx context.Context, arg EventListAllParams, fn func(ConduitEvent) error) error {
	rows, err := q.db.Query(ctx, eventListAll, arg.AfterTx, arg.AfterPosition, arg.MaxCount)
	return eachEvent(rows, err, fn)
}

// EventListByStreamEach is EventListByStream, row by row.
func (q *Queries) EventListByStreamEach(ctx context.Context, arg EventListByStreamParams, fn func(ConduitEvent) error) error {
	rows, err := q.db.Query(ctx, eventListByStream, arg.StreamID, arg.FromVersion, arg.MaxCount)
	return eachEvent(rows, err, fn)
}

// EventListForProjectionEach is EventListForProjection, row by row.
func (q *Queries) EventListForProjectionEach(ctx context.Context, arg EventListForProjectionParams, fn func(ConduitEvent) error) error {
	rows, err := q.db.Query(ctx, eventListForProjection, arg.Types, arg.AfterTx, arg.AfterPosition, arg.MaxCount)
	return eachEvent(rows, err, fn)
}

// EventListForProjectionSkipEach is EventListForProjectionSkip, row by row.
func (q *Queries) EventListForProjectionSkipEach(ctx context.Context, arg EventListForProjectionSkipParams, fn func(ConduitEvent) error) error {
	rows, err := q.db.Query(ctx, eventListForProjectionSkip, arg.Types, arg.AfterTx, arg.AfterPosition, arg.Skip, arg.MaxCount)
	return eachEvent(rows, err, fn)
}

// eachEvent decodes rows of the events table's columns, in its order.
func eachEvent(rows pgx.Rows, err error, fn func(ConduitEvent) error) error {
	if err != nil {
		return err
	}
	defer rows.Close()
	var d EventDecoder
	started := false
	for rows.Next() {
		if !started {
			var m *pgtype.Map
			if c := rows.Conn(); c != nil {
				m = c.TypeMap()
			}
			d.Start(rows.FieldDescriptions(), m)
			started = true
		}
		var i ConduitEvent
		if err := d.Decode(rows, &i); err != nil {
			return err
		}
		if err := fn(i); err != nil {
			return err
		}
	}
	return rows.Err()
}

// ProjectionLockForBatchThenList sends ProjectionLockForBatch and then
// EventListForProjection on tx together, in one round trip, and hands the
// events to fn row by row (see EventListForProjectionEach). The list runs
// after the lock, in the same transaction; the caller decides from the lock's
// row whether the events it listed are the ones it wants (list.AfterTx and
// AfterPosition are a guess of the checkpoint the lock returns).
func ProjectionLockForBatchThenList(ctx context.Context, tx pgx.Tx, lock ProjectionLockForBatchParams,
	list EventListForProjectionParams, fn func(ConduitEvent) error) (ProjectionLockForBatchRow, error) {
	b := &pgx.Batch{}
	b.Queue(projectionLockForBatch, lock.IdleTimeout, lock.Durable, lock.Name, lock.Owner, lock.Epoch)
	b.Queue(eventListForProjection, list.Types, list.AfterTx, list.AfterPosition, list.MaxCount)
	br := tx.SendBatch(ctx, b)
	var i ProjectionLockForBatchRow
	err := br.QueryRow().Scan(
		&i.CheckpointTx,
		&i.CheckpointPosition,
		&i.State,
		&i.StalledEventID,
		&i.StallReason,
		&i.FailingEventID,
		&i.FailedAttempts,
		&i.LastError,
		&i.IdleTimeout,
		&i.SynchronousCommit,
		&i.RetryPending,
		&i.Paused,
		&i.ShadowActive,
		&i.ShadowCheckpointTx,
		&i.ShadowCheckpointPosition,
		&i.ReadTables,
		&i.ShadowTables,
	)
	if err == nil {
		rows, qerr := br.Query()
		err = eachEvent(rows, qerr, fn)
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return i, err
}

// ProjectionCheckpointSaveCommit ends a projector's batch in one round trip:
// ProjectionCheckpointSave, then COMMIT, then, if begin, BEGIN of the next
// batch's transaction on the same connection. The save raises CDI06 when the
// lease is lost, so the COMMIT never runs after a save that matched nothing.
//
// committed reports that the server committed. Then pgx's tx does not know
// it: the caller must neither commit nor roll tx back, and with begun, tx's
// statements run in the new transaction (end it with tx.Commit or
// tx.Rollback, or with this function again). An error after the commit (the
// BEGIN's) only leaves begun false. Without committed, err says why, and the
// caller rolls tx back.
func ProjectionCheckpointSaveCommit(ctx context.Context, tx pgx.Tx, arg ProjectionCheckpointSaveParams, begin bool) (eventsAfter, committed, begun bool, err error) {
	b := &pgx.Batch{}
	b.Queue(projectionCheckpointSave, arg.Name, arg.CheckpointTx, arg.CheckpointPosition, arg.LeaseSeconds,
		arg.Applied, arg.CaughtUp, arg.PassedFailing, arg.Owner, arg.Epoch)
	b.Queue("COMMIT")
	if begin {
		b.Queue("BEGIN")
	}
	br := tx.SendBatch(ctx, b)
	err = br.QueryRow().Scan(&eventsAfter)
	if err == nil {
		var tag pgconn.CommandTag
		if tag, err = br.Exec(); err == nil && tag.String() != "COMMIT" {
			err = pgx.ErrTxCommitRollback // it was rolled back
		}
		committed = err == nil
	}
	if committed && begin {
		_, berr := br.Exec()
		begun = berr == nil
	}
	if cerr := br.Close(); !committed && err == nil {
		err = cerr
	}
	return eventsAfter, committed, begun, err
}

// ProjectionCheckpointSaveSQL is ProjectionCheckpointSave's text, for the
// test of its cached (generic) plan.
const ProjectionCheckpointSaveSQL = projectionCheckpointSave
