package engine

import (
	"math/rand/v2"
	"time"
)

// Backoff is exponential with jitter: its n-th wait since the last reset is
// first doubled n-1 times, capped at limit, then drawn at random between
// half and the whole of that, so that instances retrying together spread
// out.
type Backoff struct {
	first, limit time.Duration
	n            int // waits since the last reset
}

// NewBackoff returns a backoff whose first wait is about first and whose
// waits never exceed limit.
func NewBackoff(first, limit time.Duration) *Backoff { return &Backoff{first: first, limit: limit} }

// RetryCap is how many times its first wait a retry backoff grows to.
const RetryCap = 30

// NewRetryBackoff is the backoff of retries after failures (of a
// projection at an event, of a publish, of the database): first doubled up
// to RetryCap times first, with jitter. Projectors and the relay share it.
func NewRetryBackoff(first time.Duration) *Backoff { return NewBackoff(first, RetryCap*first) }

// Next returns the next wait.
func (b *Backoff) Next() time.Duration {
	b.n++
	return b.Wait(b.n)
}

// Reset starts over: the next wait is the first.
func (b *Backoff) Reset() { b.n = 0 }

// Wait returns the n-th wait (n >= 1), whatever b's own count. Doubling
// stops at the limit, so no n overflows.
func (b *Backoff) Wait(n int) time.Duration {
	step := b.first
	for i := 1; i < n && step < b.limit; i++ {
		step *= 2
	}
	step = min(step, b.limit)
	half := step / 2
	return half + rand.N(half+1)
}
