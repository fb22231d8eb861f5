package conduit

import (
	"math/rand/v2"
	"time"
)

// backoff is exponential with jitter: its n-th wait since the last reset is
// min doubled n-1 times, capped at max, then drawn at random between half
// and the whole of that, so that instances retrying together spread out.
type backoff struct {
	min, max time.Duration
	n        int // waits since the last reset
}

func newBackoff(first, limit time.Duration) *backoff { return &backoff{min: first, max: limit} }

func (b *backoff) next() time.Duration {
	b.n++
	return b.wait(b.n)
}

func (b *backoff) reset() { b.n = 0 }

// wait returns the n-th wait (n >= 1), whatever b's own count. Doubling
// stops at max, so no n overflows.
func (b *backoff) wait(n int) time.Duration {
	step := b.min
	for i := 1; i < n && step < b.max; i++ {
		step *= 2
	}
	step = min(step, b.max)
	half := step / 2
	return half + rand.N(half+1)
}
