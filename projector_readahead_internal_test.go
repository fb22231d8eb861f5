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
		if got, ok := p.takeReadAhead(ctx, c.checkpoint, c.epoch); ok || got != nil || p.ahead != nil {
			t.Errorf("%s: took %v (%v), read ahead kept: %v", c.name, got, ok, p.ahead != nil)
		}
	}

	p.ahead = ahead()
	got, ok := p.takeReadAhead(ctx, pos(1), 7)
	if !ok || len(got) != 2 || got[1].Position != pos(3) {
		t.Fatalf("took %v (%v), want events 2 and 3", got, ok)
	}
	got, ok = p.takeReadAhead(ctx, pos(3), 7)
	if !ok || len(got) != 2 || got[1].Position != pos(5) {
		t.Fatalf("took %v (%v), want events 4 and 5", got, ok)
	}
	// One event left: not a whole batch (the log's end when it was read).
	if got, ok = p.takeReadAhead(ctx, pos(5), 7); ok || p.ahead != nil {
		t.Fatalf("took %v (%v) from a partial batch", got, ok)
	}
}

// TestCollectAhead: the read ahead's statements are taken in order; one
// that comes back short ends the read ahead for now and drops the
// statement after it (which skipped events it did not see); events that do
// not follow those before them drop the read ahead.
func TestCollectAhead(t *testing.T) {
	ctx := context.Background()
	pos := func(n int64) Position { return Position{TransactionID: 10, GlobalPosition: n} }
	events := func(from, to int64) []Event {
		var es []Event
		for n := from; n <= to; n++ {
			es = append(es, Event{Position: pos(n)})
		}
		return es
	}
	fetch := func(skip bool, es []Event) *fetchAhead {
		f := &fetchAhead{limit: 3, skip: skip, done: make(chan fetchedAhead, 1)}
		f.done <- fetchedAhead{events: es}
		return f
	}
	// A budget with no slot free: no statement starts.
	p := &Projector{cfg: ProjectorConfig{BatchSize: 3}, store: &Store{projectorConns: make(chan struct{})}}
	start := func(fs ...*fetchAhead) *readAhead {
		a := &readAhead{from: pos(1), end: pos(1), epoch: 7, fetches: fs, cancel: func() {}}
		p.ahead = a
		return a
	}

	// Two full statements: both taken, in order.
	a := start(fetch(false, events(2, 4)), fetch(true, events(5, 7)))
	got, ok := p.takeReadAhead(ctx, pos(1), 7)
	if !ok || len(got) != 3 || got[2].Position != pos(4) || len(a.fetches) != 1 {
		t.Fatalf("took %v (%v), %d statements left; want events 2 to 4, one left", got, ok, len(a.fetches))
	}
	if got, ok = p.takeReadAhead(ctx, pos(4), 7); !ok || got[0].Position != pos(5) || got[2].Position != pos(7) {
		t.Fatalf("took %v (%v), want events 5 to 7", got, ok)
	}
	if p.aheadSecond.Load() != 1 {
		t.Errorf("second statements taken: %d, want 1", p.aheadSecond.Load())
	}

	// A short statement: the one after it is dropped, unread.
	a = start(fetch(false, events(2, 3)), fetch(true, events(5, 7)))
	if got, ok = p.takeReadAhead(ctx, pos(1), 7); ok || p.ahead != nil {
		t.Fatalf("took %v (%v) after a short statement", got, ok)
	}
	if !a.ended || a.fetches != nil || len(a.events) != 2 {
		t.Errorf("after a short statement: ended %v, statements %d, events %d; want ended, none, 2",
			a.ended, len(a.fetches), len(a.events))
	}

	// Events that do not follow the last fetched: dropped.
	start(fetch(false, events(2, 4)), fetch(true, events(4, 6)))
	if got, ok = p.takeReadAhead(ctx, pos(1), 7); !ok || len(got) != 3 {
		t.Fatalf("took %v (%v), want events 2 to 4", got, ok)
	}
	if got, ok = p.takeReadAhead(ctx, pos(4), 7); ok || p.ahead != nil {
		t.Fatalf("took %v (%v) from a statement overlapping the one before it", got, ok)
	}
}
