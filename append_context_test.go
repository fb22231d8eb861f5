package conduit_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// cancelOnStaleHead cancels a context when a statement fails on UNIQUE
// (stream_id, stream_version): the moment Append's statement met a stale
// head, just before Append decides to append again.
type cancelOnStaleHead struct{ cancel context.CancelFunc }

func (c *cancelOnStaleHead) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (c *cancelOnStaleHead) TraceQueryEnd(_ context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	var pgErr *pgconn.PgError
	if errors.As(data.Err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "events_stream_version_key" {
		c.cancel()
	}
}

// Found by TestAppendLinearizable (a 60-second run): an Append whose context
// ends after its statement met a stale head (the stream's lock was granted
// only after a concurrent append had committed) returns a
// *VersionConflictError with Actual -1, even with StreamExists (or Any), which
// never conflict, on a stream that exists. It must return the context's error
// (nothing was written) and never a version conflict it did not see.
func TestAppendContextEndsAfterStaleHead(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := pgtest.URLFor(t, pgtest.NewDB(t, conduit.Migrations(), conduit.Migrate))
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	appendCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	pcfg.ConnConfig.Tracer = &cancelOnStaleHead{cancel: cancel}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	admin := pgtest.Connect(t, url)
	other, err := conduit.NewStore(admin, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Append(ctx, "s", conduit.NoStream, mustEvent(t, "first", 1)); err != nil {
		t.Fatal(err)
	}

	// A transaction appends to the stream and holds its lock.
	tx, err := admin.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	if _, err := other.AppendTx(ctx, tx, "s", conduit.Any, mustEvent(t, "held", 2)); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := store.Append(appendCtx, "s", conduit.StreamExists, mustEvent(t, "late", 3))
		errc <- err
	}()
	waitBlockedBy(t, ctx, admin, backendPID(t, ctx, tx))
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	err = <-errc
	if appendCtx.Err() == nil {
		t.Fatalf("the append did not meet a stale head (err %v): the test set nothing up", err)
	}
	var vc *conduit.VersionConflictError
	if errors.As(err, &vc) {
		t.Errorf("StreamExists on a stream at version 1, then 2: %v (actual %d), want the context's error", err, vc.Actual)
	}
	if !errors.Is(err, context.Canceled) || !conduit.IsOutcomeUnknown(err) || conduit.IsRefused(err) {
		t.Errorf("err = %v: want context.Canceled, outcome unknown, not refused", err)
	}
	if n := countEvents(t, ctx, admin, "s"); n != 2 {
		t.Errorf("%d events stored, want 2", n)
	}
}
