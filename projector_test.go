package conduit_test

import (
	"context"
	"testing"

	"github.com/conduit-es/conduit"
)

func TestProjectorAppliesEachEventOnceInOrder(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	appendN(t, store, "a", 5)

	p, err := conduit.NewProjector(store, &ledger{name: "ledger"}, &conduit.ProjectorConfig{BatchSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	stop := runProjector(t, p)
	res := appendN(t, store, "b", 7)
	waitFor(t, store, "ledger", res.Position)
	checkLedgerMatchesLog(t, store, pool)

	st, err := store.ProjectionStatus(context.Background(), "ledger")
	if err != nil {
		t.Fatal(err)
	}
	if st.Owner != p.InstanceID() || st.EventsApplied != 12 || st.LagEvents != 0 || st.Checkpoint != res.Position {
		t.Fatalf("status = %+v", st)
	}
	stop()
	st, _ = store.ProjectionStatus(context.Background(), "ledger")
	if st.State != conduit.StateStopped || st.Owner != "" {
		t.Fatalf("after stop: status = %+v", st)
	}
}
