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
