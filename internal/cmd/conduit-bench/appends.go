package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// plainSQLName names the diagnostic variant that sends the version check
// from raw pgx (plainSQLVariant).
const plainSQLName = "checked INSERT in plain SQL"

// Baselines of the append rows: the same INSERT into two tables.
const (
	likeTable    = "bench.raw_events" // LIKE conduit.events INCLUDING ALL
	minimalTable = "bench.min_events" // primary key and UNIQUE (stream_id, stream_version) only
)

// benchAppends: single-event appends, one per append call, each writer on
// its own stream with the expected version checked, at 1, 8 and 32
// writers, against both baselines. Conduit batches concurrent appends
// (Config.MaxAppendBatch); the baselines are one INSERT per transaction.
// At 1 writer (nothing to batch) it also reports what the version check
// alone leaves of the raw INSERT: the checked INSERT in plain SQL against
// each baseline.
func benchAppends(ctx context.Context, srv *server, out *results) error {
	db, err := srv.freshDB(ctx, "append")
	if err != nil {
		return err
	}
	defer db.drop()
	for _, c := range []struct {
		writers int
		target  float64
	}{{1, 0.9}, {8, 1.0}, {32, 1.5}} {
		rs, err := appendRows(ctx, db, c.writers, 1, srv.opts.duration)
		if err != nil {
			return err
		}
		for _, r := range rs {
			r.group, r.target = "Single-event appends", c.target
			r.baseline = "raw single-row INSERT into " + r.baseline
			r.name = fmt.Sprintf("%d writers", c.writers)
			if c.writers == 1 {
				r.name = "1 writer"
			}
			r.name += r.baselineNote
			out.rows = append(out.rows, r)
		}
		if c.writers == 1 {
			if plain, ok := rs[0].diagnostic(plainSQLName); ok {
				out.findings = append(out.findings, fmt.Sprintf(
					"Single-event appends, 1 writer: the checked INSERT in plain SQL (the version check and the id probe "+
						"sent from raw pgx: no library, no transaction-order check, nothing returned) made %.2f× of the raw "+
						"INSERT into the table LIKE conduit.events and %.2f× of the raw INSERT into the minimal table; "+
						"Conduit made %.2f× and %.2f×. At one writer there is nothing to batch: a store that checks the "+
						"expected version reaches at most the first two figures unless its check costs less than that "+
						"statement's.",
					plain.rate/rs[0].raw.rate, plain.rate/rs[1].raw.rate, rs[0].ratio(), rs[1].ratio()))
			}
		}
	}
	return nil
}

// benchBatchAppends: 100-event appends into one stream each, one writer.
// It also reports how the two raw baselines compare with each other: the
// ceiling that conduit.events' own indexes put on a ratio against the
// minimal table.
func benchBatchAppends(ctx context.Context, srv *server, out *results) error {
	db, err := srv.freshDB(ctx, "batch")
	if err != nil {
		return err
	}
	defer db.drop()
	rs, err := appendRows(ctx, db, 1, 100, srv.opts.duration)
	if err != nil {
		return err
	}
	for i := range rs {
		r := &rs[i]
		r.group, r.target = "100-event appends", 0.9
		r.baseline = "raw 100-row INSERT … SELECT FROM unnest into " + r.baseline
		r.name = "1 writer, 100 events per append" + r.baselineNote
	}
	out.rows = append(out.rows, rs...)
	if like, minimal := rs[0].raw.rate, rs[1].raw.rate; like > 0 && minimal > 0 {
		out.findings = append(out.findings, fmt.Sprintf(
			"100-event appends: the raw INSERT into the table LIKE conduit.events (its primary key, UNIQUE (stream_id, "+
				"stream_version) and UNIQUE (event_id), its CHECKs) made %.2f× of the same INSERT into the minimal table "+
				"(an identity primary key and UNIQUE (stream_id, stream_version)): a store that keeps conduit.events' "+
				"indexes reaches at most that against the minimal table unless it inserts faster than a raw INSERT into "+
				"its own table. Conduit made %.2f× of the raw INSERT into its own table's shape.",
			like/minimal, rs[0].conduit.rate/like))
	}
	return nil
}

// appendRows measures appends of batch events per call by writers
// concurrent writers, on a pool of exactly writers connections: one row
// against each baseline table (the Conduit figures are the same), the
// diagnostics on the first. Conduit without batching is always measured
// too (a diagnostic): the 1-writer latency must stay that of an append
// alone.
func appendRows(ctx context.Context, db *benchDB, writers, batch int, d time.Duration) ([]row, error) {
	pool, err := db.pool(ctx, writers)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		return nil, err
	}
	alone, err := conduit.NewStore(pool, &conduit.Config{DisableAppendBatching: true})
	if err != nil {
		return nil, err
	}
	conduitVariant := func(name string, store *conduit.Store) variant {
		return appendVariant(name, batch, func(ctx context.Context, b *appendBatch) error {
			res, err := store.Append(ctx, b.stream, conduit.Exactly(b.version), b.events...)
			if err == nil && res.Version != b.version+int64(batch) {
				err = fmt.Errorf("append to %s at %d: now at %d", b.stream, b.version, res.Version)
			}
			return err
		})
	}
	vs := []variant{
		conduitVariant("conduit", store),
		rawAppendVariant(pool, batch, likeTable),
		rawAppendVariant(pool, batch, minimalTable),
		conduitVariant("conduit, batching off (Config.DisableAppendBatching)", alone),
	}
	if db.srv.opts.diagnose {
		vs = append(vs, plainSQLVariant(pool, batch))
	}
	label := fmt.Sprintf("%d-event appends, %d writers", batch, writers)
	st, err := compare(ctx, db.srv.opts, label, writers, d, vs...)
	if err != nil {
		return nil, err
	}
	like := row{conduit: st[0], raw: st[1], latency: true, baseline: "`" + likeTable + "` (LIKE conduit.events INCLUDING ALL)",
		baselineNote: ", base LIKE conduit.events"}
	minimal := row{conduit: st[0], raw: st[2], latency: true,
		baseline:     "`" + minimalTable + "` (primary key, UNIQUE (stream_id, stream_version))",
		baselineNote: ", base minimal table"}
	for i := 3; i < len(vs); i++ {
		like.diagnostics = append(like.diagnostics, diagnostic{vs[i].name, st[i]})
	}
	return []row{like, minimal}, nil
}

// appendBatch is one writer's next append: its stream, the version the
// stream is at, and the events with fresh ids, in three shapes so that no
// variant pays for converting another's.
type appendBatch struct {
	stream  string
	version int64
	events  []conduit.EventData
	ids     []uuid.UUID
	idText  []string // the ids as text, as Conduit sends them (see rawAppendVariant)
	types   []string
	data    []string
	meta    []string // empty strings: no metadata, as Conduit sends it
	bufs    [][]byte
	writer  int
	seq     int
}

func newAppendBatch(stream string, writer, size int) *appendBatch {
	return &appendBatch{
		stream: stream, writer: writer,
		events: make([]conduit.EventData, size),
		ids:    make([]uuid.UUID, size),
		idText: make([]string, size),
		types:  make([]string, size),
		data:   make([]string, size),
		meta:   make([]string, size),
		bufs:   make([][]byte, size),
	}
}

// next fills the batch with new events. Every variant pays for this alike.
func (b *appendBatch) next() error {
	for i := range b.events {
		id, err := uuid.NewV7()
		if err != nil {
			return err
		}
		b.seq++
		b.bufs[i] = payload(b.bufs[i], b.writer, b.seq)
		b.ids[i], b.idText[i], b.types[i], b.data[i] = id, id.String(), "deposit_made", string(b.bufs[i])
		b.events[i] = conduit.EventData{ID: id, Type: b.types[i], Data: b.bufs[i]}
	}
	return nil
}

// appendVariant makes a variant whose operation fills a batch, hands it to
// write, and moves the writer's expected version on.
func appendVariant(name string, batch int, write func(context.Context, *appendBatch) error) variant {
	return variant{name: name, start: func(_ context.Context, run string, workers int) ([]func(context.Context) (int, error), error) {
		ops := make([]func(context.Context) (int, error), workers)
		for w := range ops {
			b := newAppendBatch(fmt.Sprintf("%s-%s-%dx%d-w%d", name, run, workers, batch, w), w, batch)
			ops[w] = func(ctx context.Context) (int, error) {
				if err := b.next(); err != nil {
					return 0, err
				}
				if err := write(ctx, b); err != nil {
					return 0, err
				}
				b.version += int64(batch)
				return batch, nil
			}
		}
		return ops, nil
	}}
}

// rawAppendVariant is the baseline: a plain INSERT into bench.raw_events
// (same columns and indexes as conduit.events) in autocommit, with no
// version or idempotency check. One event: INSERT … VALUES; more: one
// INSERT … SELECT FROM unnest. Event ids go as text, as Conduit sends them:
// pgx encodes a uuid.UUID (which implements none of its UUID interfaces)
// through driver.Valuer with an error built per element, which would slow
// the baseline, not Conduit.
func rawAppendVariant(pool *pgxpool.Pool, batch int, table string) variant {
	if batch == 1 {
		sql := `INSERT INTO ` + table + ` (stream_id, stream_version, event_id, event_type, data)
				VALUES ($1, $2, $3::text::uuid, $4, $5)`
		return appendVariant("raw "+table, 1, func(ctx context.Context, b *appendBatch) error {
			_, err := pool.Exec(ctx, sql, b.stream, b.version+1, b.idText[0], b.types[0], b.bufs[0])
			return err
		})
	}
	sql := `INSERT INTO ` + table + ` (stream_id, stream_version, event_id, event_type, data)
			SELECT $1, $2 + u.ord, u.id::uuid, u.typ, u.dat::jsonb
			  FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u(id, typ, dat, ord)`
	return appendVariant("raw "+table, batch, func(ctx context.Context, b *appendBatch) error {
		_, err := pool.Exec(ctx, sql, b.stream, b.version, b.idText, b.types, b.data)
		return err
	})
}

var errNotAppended = errors.New("plain SQL append: version or event id check failed")

// plainSQLVariant does the checks that matter on the happy path (expected
// version, event id not yet used) and the insert in one plain SQL statement
// on the baseline table, sent from raw pgx: close to what Append's
// EventAppendFast does, without the Go library around it and without its
// transaction-order check.
func plainSQLVariant(pool *pgxpool.Pool, batch int) variant {
	return appendVariant(plainSQLName, batch, func(ctx context.Context, b *appendBatch) error {
		tag, err := pool.Exec(ctx, `
			INSERT INTO bench.raw_events (stream_id, stream_version, event_id, event_type, data)
			SELECT $1, $2 + u.ord, u.id::uuid, u.typ, u.dat::jsonb
			  FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u(id, typ, dat, ord)
			 WHERE COALESCE((SELECT e.stream_version FROM bench.raw_events e
			                  WHERE e.stream_id = $1 ORDER BY e.stream_version DESC LIMIT 1), 0) = $2
			   AND NOT EXISTS (SELECT FROM bench.raw_events e WHERE e.event_id = ($3::text[])[1]::uuid)`,
			b.stream, b.version, b.idText, b.types, b.data)
		if err == nil && tag.RowsAffected() != int64(batch) {
			err = errNotAppended
		}
		return err
	})
}
