package conduit_test

import (
	"errors"
	"testing"

	"github.com/conduit-es/conduit"
)

func TestAppendAndRead(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, _ := newStore(t, nil)

	res, err := store.Append(ctx, "order-1", conduit.NoStream,
		mustEvent(t, "order_placed", map[string]any{"total": 10}),
		mustEvent(t, "order_paid", map[string]any{"amount": 10}))
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	if res.Version != 2 || res.Duplicate || res.Position.IsZero() {
		t.Fatalf("result = %+v", res)
	}
	events := collect(t, store.ReadStream(ctx, "order-1", 1))
	if len(events) != 2 || events[0].Type != "order_placed" || events[1].StreamVersion != 2 {
		t.Fatalf("events = %+v", events)
	}
	if events[1].Position != res.Position {
		t.Fatalf("position %v, append said %v", events[1].Position, res.Position)
	}
	all := collect(t, store.ReadAll(ctx, conduit.Position{}))
	if len(all) != 2 || all[0].ID != events[0].ID {
		t.Fatalf("all = %+v", all)
	}
	_, err = store.Append(ctx, "order-1", conduit.Exactly(1), mustEvent(t, "x", 1))
	var vc *conduit.VersionConflictError
	if !errors.As(err, &vc) || !errors.Is(err, conduit.ErrVersionConflict) || vc.Actual != 2 {
		t.Fatalf("err = %v", err)
	}
}
