package conduit_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/conduit-es/conduit"
)

// A dump carries the leases that were live when it was taken. After
// conduit.rebase_transaction_ids() a restored instance starts at once,
// instead of waiting for a dead owner's lease to run out; a stalled
// projection stays stalled.
func TestRebaseReleasesRestoredLeases(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendN(t, store, "a", 3)
	if err := newProjector(t, store, &ledger{name: "ledger"}, nil).CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	// Simulate the restore: stored ids far above the server's, and leases
	// that look live (the dump was taken while instances ran).
	for _, sql := range []string{
		`ALTER TABLE conduit.events DISABLE TRIGGER events_immutable`,
		`UPDATE conduit.events SET transaction_id = (transaction_id::text::bigint + 1000000000)::text::xid8`,
		`ALTER TABLE conduit.events ENABLE TRIGGER events_immutable`,
		`UPDATE conduit.projections
		    SET checkpoint_tx = (checkpoint_tx::text::bigint + 1000000000)::text::xid8,
		        owner = 'instance-of-the-old-cluster', lease_expires_at = now() + interval '1 hour', state = 'running'`,
		`INSERT INTO conduit.projections (name, checkpoint_tx, checkpoint_position, owner, lease_expires_at, state, stall_reason)
		 SELECT 'stuck', checkpoint_tx, checkpoint_position, owner, lease_expires_at, 'stalled', 'boom'
		   FROM conduit.projections WHERE name = 'ledger'`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	var msg string
	if err := pool.QueryRow(ctx, `SELECT conduit.rebase_transaction_ids()`).Scan(&msg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "rebased 3 events") {
		t.Fatalf("rebase said %q", msg)
	}
	res := appendN(t, store, "a", 2)

	const leaseDuration = 30 * time.Second
	quick, cancel := context.WithTimeout(ctx, 2*time.Second) // well under the lease
	defer cancel()
	start := time.Now()
	p := newProjector(t, store, &ledger{name: "ledger"}, &conduit.ProjectorConfig{LeaseDuration: leaseDuration})
	if err := p.CatchUp(quick); err != nil {
		t.Fatalf("CatchUp after the rebase (LeaseDuration %s): %v after %s", leaseDuration, err, time.Since(start))
	}
	waitFor(t, store, "ledger", res.Position)
	checkLedgerMatchesLog(t, store, pool)
	checkStreamAppliedInOrder(t, pool, "a", 5)

	st, err := store.ProjectionStatus(ctx, "stuck")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != conduit.StateStalled || st.Owner != "" || !st.LeaseExpires.IsZero() {
		t.Fatalf("the stalled projection after the rebase: %+v, want stalled without a lease", st)
	}
}

// After a logical restore the outbox's transaction ids are above the new
// cluster's: the relay refuses to run (ErrRestoredDatabase) instead of
// waiting forever, and after conduit.rebase_transaction_ids() it delivers
// what it had not delivered, in order.
func TestRestoredOutbox(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	rec := &recorder{}
	relay := newRelay(t, store, rec, nil)
	for _, p := range []string{"m1", "m2"} {
		if err := store.Enqueue(ctx, conduit.NewMessage("t", "k", []byte(p))); err != nil {
			t.Fatal(err)
		}
	}
	drain(t, ctx, relay)
	for _, p := range []string{"m3", "m4"} {
		if err := store.Enqueue(ctx, conduit.NewMessage("t", "k", []byte(p))); err != nil {
			t.Fatal(err)
		}
	}
	for _, sql := range []string{
		`UPDATE conduit.outbox SET transaction_id = (transaction_id::text::bigint + 1000000000)::text::xid8`,
		`UPDATE conduit.outbox_relay SET checkpoint_tx = (checkpoint_tx::text::bigint + 1000000000)::text::xid8,
		        owner = 'instance-of-the-old-cluster', lease_expires_at = now() + interval '1 hour'`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if _, err := pool.Exec(ctx, `UPDATE conduit.outbox_relay SET owner = NULL, lease_expires_at = NULL`); err != nil {
		t.Fatal(err)
	}
	quick, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := relay.Run(quick); !errors.Is(err, conduit.ErrRestoredDatabase) {
		t.Fatalf("Run on a restored outbox: %v; want ErrRestoredDatabase", err)
	}
	if _, err := pool.Exec(ctx, `UPDATE conduit.outbox_relay SET owner = 'instance-of-the-old-cluster', lease_expires_at = now() + interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	var msg string
	if err := pool.QueryRow(ctx, `SELECT conduit.rebase_transaction_ids()`).Scan(&msg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, "rebased 4 outbox messages") {
		t.Fatalf("rebase said %q", msg)
	}
	if err := store.Enqueue(ctx, conduit.NewMessage("t", "k", []byte("m5"))); err != nil {
		t.Fatal(err)
	}
	drain(t, ctx, relay) // at once: the rebase released the old cluster's lease
	if got := rec.payloads("k"); !slices.Equal(got, []string{"m1", "m2", "m3", "m4", "m5"}) {
		t.Fatalf("delivered %q; want m1..m5, each once", got)
	}
}
