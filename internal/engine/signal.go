package engine

import (
	"context"
	"sync"
	"time"
)

// Signal wakes in-process waiters (projectors and relays in the same
// process as the appender) without a database round trip. Waiters take the
// current channel and block on it; Notify closes it and installs a fresh
// one. Take the channel before looking for work, so that no wake-up is lost.
type Signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// NewSignal returns a Signal.
func NewSignal() *Signal { return &Signal{ch: make(chan struct{})} }

// Wait returns a channel closed at the next Notify.
func (s *Signal) Wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

// Notify wakes every waiter.
func (s *Signal) Notify() {
	s.mu.Lock()
	close(s.ch)
	s.ch = make(chan struct{})
	s.mu.Unlock()
}

// Idle waits for a wake-up, d, or ctx's end, whichever comes first. A nil
// wake waits for d or ctx only.
func Idle(ctx context.Context, wake <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-wake:
	case <-t.C:
	}
}
