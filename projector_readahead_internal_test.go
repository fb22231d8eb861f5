package conduit

import (
	"context"
	"testing"
)

// TestTakeReadAheadGuards: events read ahead are taken only by the batch
// whose committed checkpoint is where they start, under the lease they were
// read under; otherwise they are dropped.
func TestTakeReadAheadGuards(t *testing.T) {
	ctx := context.Background()
	pos := func(n int64) Position { return Position{TransactionID: 10, GlobalPosition: n} }
	events := []Event{{Position: pos(2)}, {Position: pos(3)}, {Position: pos(4)}, {Position: pos(5)}, {Position: pos(6)}}
	ahead := func() *readAhead {
		return &readAhead{from: pos(1), epoch: 7, events: events, ended: true, cancel: func() {}}
	}
	p := &Projector{cfg: ProjectorConfig{BatchSize: 2}}

	for _, c := range []struct {
		name       string
		checkpoint Position
		epoch      int64
	}{
		{"another lease", pos(1), 8},
		{"checkpoint short of the read ahead", pos(0), 7},
		{"checkpoint past it", pos(2), 7},
	} {
		p.ahead = ahead()
		if got, ok := p.takeReadAhead(ctx, ctx, c.checkpoint, c.epoch); ok || got != nil || p.ahead != nil {
			t.Errorf("%s: took %v (%v), read ahead kept: %v", c.name, got, ok, p.ahead != nil)
		}
	}

	p.ahead = ahead()
	got, ok := p.takeReadAhead(ctx, ctx, pos(1), 7)
	if !ok || len(got) != 2 || got[1].Position != pos(3) {
		t.Fatalf("took %v (%v), want events 2 and 3", got, ok)
	}
	got, ok = p.takeReadAhead(ctx, ctx, pos(3), 7)
	if !ok || len(got) != 2 || got[1].Position != pos(5) {
		t.Fatalf("took %v (%v), want events 4 and 5", got, ok)
	}
	// One event left: not a whole batch (the log's end when it was read).
	if got, ok = p.takeReadAhead(ctx, ctx, pos(5), 7); ok || p.ahead != nil {
		t.Fatalf("took %v (%v) from a partial batch", got, ok)
	}
}
