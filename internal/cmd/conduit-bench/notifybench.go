package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
)

// benchNotify: single-event appends through Store.Append with its
// post-commit NOTIFY (coalesced, at most one per Config.NotifyInterval)
// against the same appends with Config.DisableNotify, at 1, 8 and 32
// writers, while a connection LISTENs on conduit.EventsChannel and reads
// every notification, so that delivering them is paid for in the run. A
// diagnostic shows what the mechanism avoids: a raw INSERT with pg_notify
// in the same transaction (compare with the raw INSERT of the append
// workload).
func benchNotify(ctx context.Context, srv *server, out *results) error {
	db, err := srv.freshDB(ctx, "notify")
	if err != nil {
		return err
	}
	defer db.drop()

	lis, err := newNotifyCounter(ctx, db)
	if err != nil {
		return err
	}
	defer lis.stop()

	for _, writers := range []int{1, 8, 32} {
		// One connection more than writers: the notifier's.
		pool, err := db.pool(ctx, writers+1)
		if err != nil {
			return err
		}
		notifying, err := conduit.NewStore(pool, nil)
		if err != nil {
			pool.Close()
			return err
		}
		silent, err := conduit.NewStore(pool, &conduit.Config{DisableNotify: true})
		if err != nil {
			pool.Close()
			return err
		}
		var appended atomic.Int64 // by the notifying store
		storeAppend := func(store *conduit.Store, count *atomic.Int64) func(context.Context, *appendBatch) error {
			return func(ctx context.Context, b *appendBatch) error {
				res, err := store.Append(ctx, b.stream, conduit.Exactly(b.version), b.events...)
				if err == nil && res.Version != b.version+1 {
					err = fmt.Errorf("append to %s at %d: now at %d", b.stream, b.version, res.Version)
				}
				if err == nil && count != nil {
					count.Add(1)
				}
				return err
			}
		}
		vs := []variant{
			appendVariant("conduit, NOTIFY after commit (default)", 1, storeAppend(notifying, &appended)),
			appendVariant("conduit, DisableNotify", 1, storeAppend(silent, nil)),
		}
		if srv.opts.diagnose {
			vs = append(vs,
				appendVariant("raw INSERT with pg_notify in its transaction", 1, func(ctx context.Context, b *appendBatch) error {
					_, err := pool.Exec(ctx, `
						WITH ins AS (
							INSERT INTO bench.raw_events (stream_id, stream_version, event_id, event_type, data)
							VALUES ($1, $2, $3::text::uuid, $4, $5) RETURNING 1)
						SELECT pg_notify('`+conduit.EventsChannel+`', 'raw') FROM ins`,
						b.stream, b.version+1, b.idText[0], b.types[0], b.bufs[0])
					return err
				}))
		}
		before := lis.count.Load()
		st, err := compare(ctx, srv.opts, fmt.Sprintf("NOTIFY, %d writers", writers), writers, srv.opts.duration, vs...)
		notifying.Close()
		pool.Close()
		if err != nil {
			return err
		}
		name := fmt.Sprintf("%d writers", writers)
		if writers == 1 {
			name = "1 writer"
		}
		r := row{group: "Single-event appends with NOTIFY", name: name, latency: true, target: 0.95,
			baseline: "the same appends with Config.DisableNotify", conduit: st[0], raw: st[1]}
		for i := 2; i < len(vs); i++ {
			r.diagnostics = append(r.diagnostics, diagnostic{vs[i].name, st[i]})
		}
		out.rows = append(out.rows, r)
		if n, got := appended.Load(), lis.count.Load()-before; n > 0 {
			out.findings = append(out.findings, fmt.Sprintf(
				"At %d writer(s) the listener received %d notifications for %d notified appends (one per %.0f appends).",
				writers, got, n, float64(n)/float64(max(got, 1))))
		}
	}
	if err := lis.err(); err != nil {
		return err
	}
	return nil
}

// notifyCounter is a raw pgx connection that LISTENs on the events channel
// and counts Conduit's notifications (empty payload; the raw diagnostic's
// say "raw").
type notifyCounter struct {
	count  atomic.Int64
	cancel context.CancelFunc
	done   chan error
}

func newNotifyCounter(ctx context.Context, db *benchDB) (*notifyCounter, error) {
	cfg, err := pgx.ParseConfig(db.srv.opts.url)
	if err != nil {
		return nil, err
	}
	cfg.Database = db.name
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+conduit.EventsChannel); err != nil {
		conn.Close(ctx)
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	n := &notifyCounter{cancel: cancel, done: make(chan error, 1)}
	go func() {
		defer conn.Close(context.Background())
		for {
			note, err := conn.WaitForNotification(runCtx)
			if err != nil {
				if runCtx.Err() != nil {
					err = nil
				}
				n.done <- err
				return
			}
			if note.Payload == "" {
				n.count.Add(1)
			}
		}
	}()
	return n, nil
}

func (n *notifyCounter) stop() { n.cancel() }

// err reports a listener that died during the workload.
func (n *notifyCounter) err() error {
	select {
	case err := <-n.done:
		if err == nil {
			err = errors.New("listener stopped")
		}
		return fmt.Errorf("notification listener: %w", err)
	default:
		return nil
	}
}
