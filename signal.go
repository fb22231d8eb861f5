package conduit

import "sync"

// appendSignal wakes in-process waiters (projectors in the same process as
// the appender) without a database round trip. Waiters take the current
// channel and block on it; notify closes it and installs a fresh one.
type appendSignal struct {
	mu sync.Mutex
	ch chan struct{}
}

func newAppendSignal() appendSignal { return appendSignal{ch: make(chan struct{})} }

// wait returns a channel closed at the next notify.
func (s *appendSignal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

func (s *appendSignal) notify(Position) {
	s.mu.Lock()
	close(s.ch)
	s.ch = make(chan struct{})
	s.mu.Unlock()
}
