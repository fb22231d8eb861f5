package conduit

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/conduit-es/conduit/internal/dberr"
	"github.com/conduit-es/conduit/internal/dbgen"
)

// appendBatcher gathers the Appends of one Store that arrive while others
// are in flight, and sends them together, as one statement in one
// transaction (conduit.append_batch): natural batching. An append that
// finds a free lane goes alone at once, so an idle store adds no latency;
// those that arrive while every lane is busy wait, and the first of them,
// as soon as a lane is free, sends the next batch, of everything waiting
// (up to Config.MaxAppendBatch appends and Config.MaxAppendSize bytes).
// Right after a batch of several appends, the next one first waits a
// little for that batch's callers (see gatherLocked).
// There is no goroutine of its own: a batch is sent by a goroutine that
// its first append starts and that ends with it.
//
// A send in flight holds a lane; there are appendLanes. A send that takes
// longer than appendStallAfter (it waits for the lock of a stream that a
// long transaction holds, say) frees its lane, so that one slow append
// never holds the others up.
type appendBatcher struct {
	maxAppends, maxBytes int
	lanes                int           // appendLanes
	stallAfter           time.Duration // appendStallAfter; tests change it

	mu      sync.Mutex
	holders []*sendToken    // the sends that hold a lane
	leader  bool            // the queue's first append was made to send the next batch, and has not yet
	queue   []*queuedAppend // waiting for the next batch, in call order

	// The last send to end: how many appends it carried, when it ended
	// and how long it took (see gatherLocked).
	lastSize int
	lastEnd  time.Time
	lastTook time.Duration
	gather   int           // while a leader gathers: how many appends it waits for
	gathered chan struct{} // while a leader gathers: signalled once the queue holds that many

	sends, sent int64 // sends ended, and the appends they carried (for tests)
}

const (
	// appendLanes is how many sends of a Store are in flight before
	// appends wait for the next batch. One: on this project's 2-core test
	// machine, two lanes (one batch sent while the other commits) made
	// smaller batches and fewer appends per second at 8 and 32 writers.
	appendLanes = 1
	// appendStallAfter is how long a send holds its lane at most. It is
	// above the time of a batch under load, so that it is only reached by
	// a send that waits for something.
	appendStallAfter = 20 * time.Millisecond
	// appendGatherShare is the share of the last send's time that the
	// leader of the next batch waits, at most, for the callers of that
	// send to come back (see gatherLocked).
	appendGatherShare = 4 // a quarter
	// appendGatherMax bounds that wait.
	appendGatherMax = time.Millisecond
)

// sendToken is a send in flight, an append alone or a batch, that holds a
// lane. Under appendBatcher.mu.
type sendToken struct {
	started bool        // sent (a leader's token is made before its batch)
	stall   *time.Timer // set once an append waits while the send holds its lane
	size    int         // appends it carries
	begin   time.Time   // when it was sent
}

// gatherLocked says how many appends the leader of the next batch waits
// for, and how long at most: none when the last send carried one append
// (so an idle store, or a single writer, never waits), else as many as
// that send carried, for at most a quarter of its time (at most
// appendGatherMax), and only while it ended that recently. Under load the
// callers of a batch append again as soon as they have their results; a
// leader that went at once would send the first of them alone, and the
// others would wait for it, in the next batch: small batches, and twice
// the round trips.
func (b *appendBatcher) gatherLocked(now time.Time) (int, time.Duration) {
	if b.lastSize < 2 {
		return 0, 0
	}
	d := min(b.lastTook/appendGatherShare, appendGatherMax)
	if wait := d - now.Sub(b.lastEnd); wait > 0 {
		return min(b.lastSize, b.maxAppends), wait
	}
	return 0, 0
}

// startLocked makes a send that holds a lane.
func (b *appendBatcher) startLocked() *sendToken {
	t := &sendToken{}
	b.holders = append(b.holders, t)
	return t
}

// waitLocked puts q in the queue. From then on, each send holds its lane
// for at most stallAfter.
func (b *appendBatcher) waitLocked(q *queuedAppend) {
	b.queue = append(b.queue, q)
	if b.gathered != nil && len(b.queue) >= b.gather {
		close(b.gathered)
		b.gathered = nil
	}
	for _, t := range b.holders {
		if t.stall == nil {
			t.stall = time.AfterFunc(b.stallAfter, func() { b.stalled(t) })
		}
	}
}

// stalled frees the lane of a send that holds it too long.
func (b *appendBatcher) stalled(t *sendToken) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !slices.Contains(b.holders, t) {
		return
	}
	if !t.started {
		// A leader that has not yet sent (a busy scheduler): give it as
		// long again.
		t.stall.Reset(b.stallAfter)
		return
	}
	b.releaseLocked(t)
}

// end ends the send t and frees its lane if it still holds one.
func (b *appendBatcher) end(t *sendToken) {
	b.mu.Lock()
	if t.stall != nil {
		t.stall.Stop()
	}
	b.lastEnd = time.Now()
	b.lastSize, b.lastTook = t.size, b.lastEnd.Sub(t.begin)
	b.sends, b.sent = b.sends+1, b.sent+int64(t.size)
	b.releaseLocked(t)
	b.mu.Unlock()
}

func (b *appendBatcher) releaseLocked(t *sendToken) {
	if i := slices.Index(b.holders, t); i >= 0 {
		b.holders = slices.Delete(b.holders, i, i+1)
		b.promoteLocked()
	}
}

// promoteLocked makes the first waiting append, if there is one and a free
// lane, send the next batch.
func (b *appendBatcher) promoteLocked() {
	if b.leader || len(b.queue) == 0 || len(b.holders) >= b.lanes {
		return
	}
	first := b.queue[0]
	first.state = leading
	first.token = b.startLocked()
	b.leader = true
	first.wake <- struct{}{}
}

// queuedAppend is an Append waiting in the batcher's queue, then in a batch.
type queuedAppend struct {
	ctx   context.Context
	a     appendArgs
	bytes int
	wake  chan struct{} // one signal: state changed to leading, taken or dropped
	state queueState    // under appendBatcher.mu
	token *sendToken    // when leading: its send

	// The outcome, set before done is closed.
	done chan struct{}
	res  AppendResult
	// explain: the batch wrote nothing for this append; alone: the batch
	// rolled back; err: the batch's outcome is unknown.
	explain, alone bool
	err            error
}

type queueState int

const (
	queued  queueState = iota // waiting in the queue
	leading                   // first in the queue, with a lane: sends the next batch
	taken                     // in a batch
	dropped                   // its context ended before it was sent: taken out, never sent
)

// appendBatched is Append through the batcher.
func (s *Store) appendBatched(ctx context.Context, a appendArgs) (AppendResult, error) {
	b := &s.batcher
	b.mu.Lock()
	if now := time.Now(); len(b.holders) < b.lanes && len(b.queue) == 0 {
		if n, _ := b.gatherLocked(now); n == 0 {
			t := b.startLocked()
			t.started, t.size, t.begin = true, 1, now
			b.mu.Unlock()
			res, err := s.appendAlone(ctx, a, nil, false)
			b.end(t)
			return res, err
		}
	}
	q := &queuedAppend{ctx: ctx, a: a, bytes: a.size(), wake: make(chan struct{}, 1), done: make(chan struct{})}
	b.waitLocked(q)
	b.promoteLocked() // a free lane: q leads, and gathers
	b.mu.Unlock()

	for wait, gathered := true, false; ; {
		if wait {
			select {
			case <-q.wake:
			case <-ctx.Done():
			}
		}
		wait = true
		b.mu.Lock()
		if q.state == taken {
			b.mu.Unlock()
			break // in a batch being sent
		}
		if ctx.Err() != nil {
			// Never sent: take it out, and if it was to send the next
			// batch, the next in the queue does.
			if i := slices.Index(b.queue, q); i >= 0 {
				b.queue = slices.Delete(b.queue, i, i+1)
			}
			if q.state == leading {
				b.leader = false
				b.releaseLocked(q.token)
			}
			b.mu.Unlock()
			return AppendResult{}, fmt.Errorf("conduit: append to stream %q: %w", a.StreamID, ctx.Err())
		}
		if q.state == leading && !gathered {
			// Wait a little for the callers of the last batch, if it was
			// one (see gatherLocked).
			gathered = true
			if n, d := b.gatherLocked(time.Now()); n > len(b.queue) {
				ch := make(chan struct{})
				b.gather, b.gathered = n, ch
				b.mu.Unlock()
				timer := time.NewTimer(d)
				select {
				case <-ch:
				case <-timer.C:
				case <-ctx.Done():
				}
				timer.Stop()
				b.mu.Lock()
				if b.gathered == ch {
					b.gathered = nil
				}
				b.mu.Unlock()
				wait = false
				continue
			}
		}
		if q.state == leading {
			t := q.token
			b.leader = false
			batch := b.takeLocked()
			t.started, t.size, t.begin = true, len(batch), time.Now()
			b.promoteLocked() // appends left in the queue, and a free lane
			b.mu.Unlock()
			if len(batch) == 1 {
				res, err := s.appendAlone(ctx, a, nil, false)
				b.end(t)
				return res, err
			}
			go s.sendBatch(batch, t)
			break
		}
		b.mu.Unlock()
	}

	select {
	case <-q.done:
	case <-ctx.Done():
		select {
		case <-q.done:
		default:
			// Sent, and the answer has not come: the outcome is unknown
			// (the context's error says so), as for an Append alone.
			return AppendResult{}, fmt.Errorf("conduit: append to stream %q: %w", a.StreamID, ctx.Err())
		}
	}
	switch {
	case q.err != nil:
		return AppendResult{}, s.appendError(ctx, q.err, a)
	case q.alone:
		// Nothing of the batch committed: append alone.
		return s.appendAlone(ctx, a, nil, false)
	case q.explain:
		// The batch wrote nothing for it: ask why, as an append alone does.
		return s.appendAlone(ctx, a, nil, true)
	}
	return q.res, nil
}

// takeLocked takes the next batch from the queue: the waiting appends in
// call order, up to the bounds, at least one, each stream once (a later
// append to a stream of the batch waits for the next, and so do those
// after it to that stream, so a stream's appends keep their call order).
// Appends whose context ended are dropped, never sent.
func (b *appendBatcher) takeLocked() []*queuedAppend {
	var (
		batch   []*queuedAppend
		bytes   int
		streams = map[string]bool{}
		rest    = b.queue[:0]
	)
	for i, q := range b.queue {
		if len(batch) > 0 && (len(batch) == b.maxAppends || bytes+q.bytes > b.maxBytes) {
			rest = append(rest, b.queue[i:]...)
			break
		}
		if streams[q.a.StreamID] {
			rest = append(rest, q)
			continue
		}
		streams[q.a.StreamID] = true
		if q.ctx.Err() != nil && q.state != leading {
			q.state = dropped
			q.wake <- struct{}{}
			continue
		}
		if q.state != leading {
			q.wake <- struct{}{}
		}
		q.state = taken
		batch = append(batch, q)
		bytes += q.bytes
	}
	clear(b.queue[len(rest):])
	b.queue = rest
	return batch
}

// sendBatch sends a batch of two or more appends, gives each its outcome,
// and lets the next batch go. It runs on its own goroutine, in a context
// that ends only when every caller's has: a caller that leaves early gets
// an "outcome unknown" error, and the others still get theirs.
func (s *Store) sendBatch(batch []*queuedAppend, t *sendToken) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(batch[0].ctx))
	defer cancel()
	left := atomic.Int32{}
	left.Store(int32(len(batch)))
	for _, q := range batch {
		stop := context.AfterFunc(q.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}

	rows, err := s.appendBatch(ctx, batch)
	s.batcher.end(t)

	switch {
	case err == nil && !inCallOrder(rows, len(batch)):
		err = fmt.Errorf("conduit: append_batch returned %d rows for %d appends, or out of order", len(rows), len(batch))
	case err != nil && dberr.RolledBack(err):
		// A unique violation (a writer that bypasses the stream lock, an
		// event id stored elsewhere), a deadlock, invalid input the checks
		// missed: nothing committed, and each append alone gets its own
		// answer.
		for _, q := range batch {
			q.alone = true
		}
		err = nil
	}
	for i, q := range batch {
		switch {
		case err != nil:
			q.err = err
		case q.alone:
		case rows[i].Status == dberr.StatusOK:
			q.res = AppendResult{Version: rows[i].StreamVersion,
				Position: Position{TransactionID: rows[i].TransactionID, GlobalPosition: rows[i].GlobalPosition}}
		default:
			q.explain = true
		}
		close(q.done)
	}
}

// appendBatch runs the batch's statement: when every append has one event,
// conduit.append_batch_one, or conduit.append_batch_one_outbox if some
// enqueue outbox messages; else conduit.append_batch.
func (s *Store) appendBatch(ctx context.Context, batch []*queuedAppend) ([]dbgen.EventAppendBatchRow, error) {
	msgs := 0
	for _, q := range batch {
		if len(q.a.ids) != 1 {
			return s.queries.EventAppendBatch(ctx, batchParams(batch))
		}
		msgs += q.a.msgs.len()
	}
	p := dbgen.EventAppendBatchOneOutboxParams{
		Streams:  make([]string, len(batch)),
		Expected: make([]int64, len(batch)),
		EventIds: make([]string, len(batch)),
		Types:    make([]string, len(batch)),
		Data:     make([]string, len(batch)),
		Metadata: make([]string, len(batch)),
	}
	if msgs > 0 {
		p.MessageAppends = make([]int32, 0, msgs)
	}
	for i, q := range batch {
		a := &q.a
		p.Streams[i], p.Expected[i] = a.StreamID, a.Expected
		p.EventIds[i], p.Types[i], p.Data[i], p.Metadata[i] = a.EventIds[0], a.Types[0], a.Data[0], a.Metadata[0]
		for range a.msgs.len() {
			p.MessageAppends = append(p.MessageAppends, int32(i+1))
		}
		p.MessageIds = append(p.MessageIds, a.msgs.ids...)
		p.Topics = append(p.Topics, a.msgs.topics...)
		p.Keys = append(p.Keys, a.msgs.keys...)
		p.Payloads = append(p.Payloads, a.msgs.payloads...)
		p.Headers = append(p.Headers, a.msgs.headers...)
	}
	if msgs > 0 {
		rows, err := s.queries.EventAppendBatchOneOutbox(ctx, p)
		out := make([]dbgen.EventAppendBatchRow, len(rows))
		for i, r := range rows {
			out[i] = dbgen.EventAppendBatchRow(r)
		}
		return out, err
	}
	one, err := s.queries.EventAppendBatchOne(ctx, dbgen.EventAppendBatchOneParams{
		Streams: p.Streams, Expected: p.Expected, EventIds: p.EventIds, Types: p.Types, Data: p.Data, Metadata: p.Metadata,
	})
	rows := make([]dbgen.EventAppendBatchRow, len(one))
	for i, r := range one {
		rows[i] = dbgen.EventAppendBatchRow(r)
	}
	return rows, err
}

// batchParams is the arrays of conduit.append_batch.
func batchParams(batch []*queuedAppend) dbgen.EventAppendBatchParams {
	events, msgs := 0, 0
	for _, q := range batch {
		events += len(q.a.ids)
		msgs += q.a.msgs.len()
	}
	p := dbgen.EventAppendBatchParams{
		Streams:      make([]string, 0, len(batch)),
		Expected:     make([]int64, 0, len(batch)),
		EventAppends: make([]int32, 0, events),
		EventIds:     make([]string, 0, events),
		Types:        make([]string, 0, events),
		Data:         make([]string, 0, events),
		Metadata:     make([]string, 0, events),
	}
	if msgs > 0 {
		p.MessageAppends = make([]int32, 0, msgs)
	}
	for i, q := range batch {
		a := &q.a
		p.Streams = append(p.Streams, a.StreamID)
		p.Expected = append(p.Expected, a.Expected)
		for range a.ids {
			p.EventAppends = append(p.EventAppends, int32(i+1))
		}
		p.EventIds = append(p.EventIds, a.EventIds...)
		p.Types = append(p.Types, a.Types...)
		p.Data = append(p.Data, a.Data...)
		p.Metadata = append(p.Metadata, a.Metadata...)
		for range a.msgs.len() {
			p.MessageAppends = append(p.MessageAppends, int32(i+1))
		}
		p.MessageIds = append(p.MessageIds, a.msgs.ids...)
		p.Topics = append(p.Topics, a.msgs.topics...)
		p.Keys = append(p.Keys, a.msgs.keys...)
		p.Payloads = append(p.Payloads, a.msgs.payloads...)
		p.Headers = append(p.Headers, a.msgs.headers...)
	}
	return p
}

// size is the append's data and metadata in bytes.
func (a *appendArgs) size() int {
	n := 0
	for i := range a.Data {
		n += len(a.Data[i]) + len(a.Metadata[i])
	}
	return n
}

// inCallOrder reports one row per append, in call order.
func inCallOrder(rows []dbgen.EventAppendBatchRow, n int) bool {
	if len(rows) != n {
		return false
	}
	for i, r := range rows {
		if int(r.AppendIndex) != i+1 {
			return false
		}
	}
	return true
}
