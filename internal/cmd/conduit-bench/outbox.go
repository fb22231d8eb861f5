package main

import (
	"context"
	"fmt"

	"github.com/conduit-es/conduit"
)

// benchOutboxAppends: single-event appends whose event a Config.Outbox rule
// turns into an outbox message (enqueued in the append's own statement),
// against the same appends on a store without the rule, at 1 and 8
// writers. The relay's own figures (throughput into JetStream, latency,
// the table's size) are measured by conduitnats's benchmark, which needs
// NATS.
func benchOutboxAppends(ctx context.Context, srv *server) ([]row, error) {
	db, err := srv.freshDB(ctx, "outbox")
	if err != nil {
		return nil, err
	}
	defer db.drop()
	var rows []row
	for _, writers := range []int{1, 8} {
		pool, err := db.pool(ctx, writers)
		if err != nil {
			return nil, err
		}
		plain, err := conduit.NewStore(pool, nil)
		if err != nil {
			pool.Close()
			return nil, err
		}
		withOutbox, err := conduit.NewStore(pool, &conduit.Config{Outbox: []conduit.OutboxRule{
			{EventType: "deposit_made", Topic: "bench.deposits"},
		}})
		if err != nil {
			pool.Close()
			return nil, err
		}
		label := fmt.Sprintf("appends with an outbox message, %d writers", writers)
		st, err := compare(ctx, srv.opts, label, writers, srv.opts.duration,
			appendVariant("with-outbox", 1, appendSingle(withOutbox)),
			appendVariant("plain", 1, appendSingle(plain)))
		pool.Close()
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("%d writers", writers)
		if writers == 1 {
			name = "1 writer"
		}
		rows = append(rows, row{group: "Appends that enqueue one outbox message", name: name,
			baseline: "the same appends without an outbox rule", conduit: st[0], raw: st[1], target: 0.85, latency: true})
	}
	return rows, nil
}

// appendSingle appends a batch's single event to store at the writer's
// expected version, and checks the version it lands at.
func appendSingle(store *conduit.Store) func(context.Context, *appendBatch) error {
	return func(ctx context.Context, b *appendBatch) error {
		res, err := store.Append(ctx, b.stream, conduit.Exactly(b.version), b.events...)
		if err == nil && res.Version != b.version+1 {
			err = fmt.Errorf("append to %s at %d: now at %d", b.stream, b.version, res.Version)
		}
		return err
	}
}
