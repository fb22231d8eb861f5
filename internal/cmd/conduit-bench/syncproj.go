package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// benchSyncProjection: single-event appends with a synchronous projection
// (Config.Projections: an upsert of the stream's count into a read table,
// in the append's transaction) at 8 and 32 writers. Store.Append sends
// such appends alone, each in a transaction of its own, because a failed
// projection must roll back its own append only. The row asks whether
// batching them with a savepoint per append would pay: against Append
// alone, it measures the best such a batch could do, one transaction of W
// appends (one per writer's stream), each under a savepoint (AppendTx, which
// runs the projection, between tx.Begin and its release), one transaction
// at a time as the batcher's single lane sends them, with no hand-off
// between goroutines. Met: going alone is at least as fast.
func benchSyncProjection(ctx context.Context, srv *server) ([]row, error) {
	db, err := srv.freshDB(ctx, "syncproj")
	if err != nil {
		return nil, err
	}
	defer db.drop()
	var rows []row
	for _, writers := range []int{8, 32} {
		pool, err := db.pool(ctx, writers)
		if err != nil {
			return nil, err
		}
		if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS bench.sync_counts (stream_id text PRIMARY KEY, n bigint NOT NULL)`); err != nil {
			pool.Close()
			return nil, err
		}
		store, err := conduit.NewStore(pool, &conduit.Config{Projections: []conduit.Projection{countProjection{}}})
		if err != nil {
			pool.Close()
			return nil, err
		}
		label := fmt.Sprintf("appends with a synchronous projection, %d writers", writers)
		st, err := compare(ctx, srv.opts, label, writers, srv.opts.duration,
			appendVariant("alone", 1, appendSingle(store)),
			savepointBatchVariant(pool, store))
		pool.Close()
		if err != nil {
			return nil, err
		}
		rows = append(rows, row{group: "Appends with a synchronous projection",
			name: fmt.Sprintf("%d writers (Append alone, against savepoint batches)", writers),
			baseline: fmt.Sprintf("the same appends, %d per transaction, each under a savepoint (AppendTx), "+
				"one transaction at a time: what batching them would do at best", writers),
			conduit: st[0], raw: st[1], target: 1.0})
	}
	return rows, nil
}

// savepointBatchVariant is one worker that appends one event to each of W
// streams (W: the run's writers) in one transaction, each append under a
// savepoint of its own, so that a failed projection would roll back its
// own append only.
func savepointBatchVariant(pool *pgxpool.Pool, store *conduit.Store) variant {
	return variant{name: "savepoint batches", start: func(_ context.Context, run string, workers int) ([]func(context.Context) (int, error), error) {
		bs := make([]*appendBatch, workers)
		for w := range bs {
			bs[w] = newAppendBatch(fmt.Sprintf("savepoints-%s-%d-w%d", run, workers, w), w, 1)
		}
		op := func(ctx context.Context) (int, error) {
			for _, b := range bs {
				if err := b.next(); err != nil {
					return 0, err
				}
			}
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				for _, b := range bs {
					sp, err := tx.Begin(ctx) // SAVEPOINT
					if err != nil {
						return err
					}
					if _, err := store.AppendTx(ctx, sp, b.stream, conduit.Exactly(b.version), b.events...); err != nil {
						return err
					}
					if err := sp.Commit(ctx); err != nil { // RELEASE SAVEPOINT
						return err
					}
				}
				return nil
			})
			if err != nil {
				return 0, err
			}
			store.Notify()
			for _, b := range bs {
				b.version++
			}
			return len(bs), nil
		}
		return []func(context.Context) (int, error){op}, nil
	}}
}

// countProjection counts each stream's events in bench.sync_counts.
type countProjection struct{}

func (countProjection) Name() string { return "bench_sync_counts" }

func (countProjection) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	_, err := tx.Exec(ctx, `INSERT INTO bench.sync_counts (stream_id, n) VALUES ($1, 1)
		ON CONFLICT (stream_id) DO UPDATE SET n = bench.sync_counts.n + 1`, e.StreamID)
	return err
}
