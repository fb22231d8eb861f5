package conduit

import "time"

// Test-only hooks for the fault-injection tests (package conduit_test).

// ListenerPID returns the backend process id of s's listener connection, or
// 0 while it is down (or was never started).
func ListenerPID(s *Store) uint32 { return s.listener.PID() }

// ListenerReady returns a channel closed once s's listener has LISTENed for
// the first time.
func ListenerReady(s *Store) <-chan struct{} { return s.listener.Listened() }

// RetryWait returns the wait of a projector configured with cfg before it
// tries an event again after its attempt-th failure.
func RetryWait(cfg *ProjectorConfig, attempt int) (time.Duration, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return 0, err
	}
	return c.retryWait(attempt), nil
}

// MigrationLockID is the advisory lock id that serializes Migrate.
const MigrationLockID = migrationLockID

// WithTraceparent is withTraceparent, for its test.
var WithTraceparent = withTraceparent

// HoldAppendQueue gives s's batcher one lane, which a send holds however
// long it takes: appends wait in the queue while one is in flight, so that
// a test can line up a batch.
func HoldAppendQueue(s *Store) { s.batcher.lanes, s.batcher.stallAfter = 1, time.Hour }

// QueuedAppends returns how many appends wait in s's batcher's queue.
func QueuedAppends(s *Store) int {
	s.batcher.mu.Lock()
	defer s.batcher.mu.Unlock()
	return len(s.batcher.queue)
}

// AppendSends returns how many sends (an append alone or a batch) s's
// batcher has made, and how many appends they carried.
func AppendSends(s *Store) (sends, appends int64) {
	s.batcher.mu.Lock()
	defer s.batcher.mu.Unlock()
	return s.batcher.sends, s.batcher.sent
}

// ReadAheadBatches returns how many of p's batches took events it had read
// ahead.
func ReadAheadBatches(p *Projector) int64 { return p.aheadUsed.Load() }

// ReadAheadSecondStatements counts p's read-ahead statements that skipped
// the events of the statement before them, run at the same time.
func ReadAheadSecondStatements(p *Projector) int64 { return p.aheadSecond.Load() }

// SetReadAheadEvents sets how many events one statement of p's read ahead
// fetches. Call it before p runs.
func SetReadAheadEvents(p *Projector, n int) { p.aheadEvents = n }

// BegunBatches counts the batches that ran in a transaction their previous
// batch began in the round trip of its commit.
func BegunBatches(p *Projector) int64 { return p.begunUsed.Load() }
