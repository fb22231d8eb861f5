package conduit_test

import (
	"errors"
	"testing"
	"time"

	"github.com/conduit-es/conduit"
)

// A paused projection applies nothing until resumed, whichever way it was
// paused (Go or SQL); its instance keeps running and keeps its lease;
// status says paused; WaitFor and CatchUp answer at once.
func TestPauseAndResume(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	before := appendN(t, store, "a", 3)
	runProjector(t, newProjector(t, store, &ledger{name: "ledger"}, &conduit.ProjectorConfig{PollInterval: 10 * time.Millisecond}))
	waitFor(t, store, "ledger", before.Position)

	if err := store.PauseProjection(ctx, "ledger"); err != nil {
		t.Fatal(err)
	}
	st, err := store.ProjectionStatus(ctx, "ledger")
	if err != nil || st.State != conduit.StatePaused || st.PausedAt.IsZero() || st.Owner == "" {
		t.Fatalf("status after PauseProjection: %+v, %v", st, err)
	}
	paused := appendN(t, store, "a", 2)
	var pausedErr *conduit.ProjectionPausedError
	if err := store.WaitFor(ctx, "ledger", paused.Position); !errors.As(err, &pausedErr) ||
		!errors.Is(err, conduit.ErrProjectionPaused) || pausedErr.Projection != "ledger" {
		t.Fatalf("WaitFor a paused projection = %v, want a *ProjectionPausedError", err)
	}
	// Another instance's CatchUp: the running one holds the lease, paused.
	if err := newProjector(t, store, &ledger{name: "ledger"}, nil).CatchUp(ctx); !errors.Is(err, conduit.ErrProjectionPaused) {
		t.Fatalf("CatchUp of a paused projection = %v, want ErrProjectionPaused", err)
	}
	// Absence takes a window: twenty polls of the running instance, each a
	// batch that finds the projection paused. Nothing may be applied.
	time.Sleep(200 * time.Millisecond)
	if st, err := store.ProjectionStatus(ctx, "ledger"); err != nil || st.Checkpoint != before.Position ||
		st.State != conduit.StatePaused || st.LagEvents != 2 {
		t.Fatalf("a paused projection moved: %+v, %v", st, err)
	}
	if rows := readLedger(t, pool); len(rows) != 3 {
		t.Fatalf("a paused projection applied events: %d rows, want 3", len(rows))
	}
	// Pausing again keeps the first time.
	if err := store.PauseProjection(ctx, "ledger"); err != nil {
		t.Fatal(err)
	}
	if again, _ := store.ProjectionStatus(ctx, "ledger"); !again.PausedAt.Equal(st.PausedAt) {
		t.Fatalf("pausing again moved paused_at from %s to %s", st.PausedAt, again.PausedAt)
	}

	if err := store.ResumeProjection(ctx, "ledger"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, "ledger", paused.Position)
	checkLedgerMatchesLog(t, store, pool)
	if st, _ := store.ProjectionStatus(ctx, "ledger"); st.State == conduit.StatePaused || !st.PausedAt.IsZero() {
		t.Fatalf("status after ResumeProjection: %+v", st)
	}

	// The same from SQL, as at a psql prompt (dberr's tests check that
	// resume_projection notifies the projectors' channel).
	if _, err := pool.Exec(ctx, `SELECT conduit.pause_projection('ledger')`); err != nil {
		t.Fatal(err)
	}
	var state string
	if err := pool.QueryRow(ctx, `SELECT state FROM conduit.projection_status() WHERE name = 'ledger'`).Scan(&state); err != nil || state != "paused" {
		t.Fatalf("projection_status after pause_projection: %q, %v", state, err)
	}
	last := appendN(t, store, "b", 2)
	if _, err := pool.Exec(ctx, `SELECT conduit.resume_projection('ledger')`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, "ledger", last.Position)
	checkLedgerMatchesLog(t, store, pool)
}

func TestPauseUnknownProjection(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	for _, name := range []string{"nobody", ""} {
		if err := store.PauseProjection(ctx, name); !errors.Is(err, conduit.ErrNotFound) {
			t.Errorf("PauseProjection(%q) = %v, want ErrNotFound", name, err)
		}
		if err := store.ResumeProjection(ctx, name); !errors.Is(err, conduit.ErrNotFound) {
			t.Errorf("ResumeProjection(%q) = %v, want ErrNotFound", name, err)
		}
	}
	if _, err := pool.Exec(ctx, `SELECT conduit.pause_projection('nobody')`); sqlState(err) != "CDI02" {
		t.Fatalf("pause_projection of an unknown name: %v, want SQLSTATE CDI02", err)
	}
}

// A rebuild of a paused projection truncates and resets at once; its
// replay waits for the resume.
func TestRebuildWhilePaused(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)
	createLedger(t, pool)
	res := appendN(t, store, "a", 4)
	runProjector(t, newProjector(t, store, &ledger{name: "ledger"}, &conduit.ProjectorConfig{PollInterval: 10 * time.Millisecond}))
	waitFor(t, store, "ledger", res.Position)
	if err := store.PauseProjection(ctx, "ledger"); err != nil {
		t.Fatal(err)
	}
	if err := store.RebuildProjection(ctx, "ledger"); err != nil {
		t.Fatal(err)
	}
	if st, err := store.ProjectionStatus(ctx, "ledger"); err != nil || st.State != conduit.StatePaused ||
		!st.Checkpoint.IsZero() || st.RebuildStarted.IsZero() {
		t.Fatalf("after rebuilding a paused projection: %+v, %v", st, err)
	}
	if rows := readLedger(t, pool); len(rows) != 0 {
		t.Fatalf("the rebuild left %d rows", len(rows))
	}
	if err := store.ResumeProjection(ctx, "ledger"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, store, "ledger", res.Position)
	checkLedgerMatchesLog(t, store, pool)
}
