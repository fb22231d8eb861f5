package engine

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	b := NewBackoff(10*time.Millisecond, 80*time.Millisecond)
	for n := 1; n <= 40; n++ {
		step := min(10*time.Millisecond<<min(n-1, 10), 80*time.Millisecond)
		for range 50 {
			if w := b.Wait(n); w < step/2 || w > step {
				t.Fatalf("wait %d = %s, want within [%s, %s]", n, w, step/2, step)
			}
		}
	}
	b.Next()
	b.Next()
	b.Reset()
	if w := b.Next(); w > 10*time.Millisecond {
		t.Fatalf("first wait after Reset = %s", w)
	}
}

func TestSignalWakesEveryWaiter(t *testing.T) {
	s := NewSignal()
	var wg sync.WaitGroup
	for range 5 {
		ch := s.Wait()
		wg.Add(1)
		go func() { defer wg.Done(); <-ch }()
	}
	s.Notify()
	wg.Wait()
	select {
	case <-s.Wait():
		t.Fatal("a fresh channel is closed before the next Notify")
	default:
	}
}

// fakeLease is a lease row in memory.
type fakeLease struct {
	mu      sync.Mutex
	epoch   int64
	holder  int64 // epoch holding it; 0 free
	renews  atomic.Int32
	changes []string
}

func (f *fakeLease) config(call time.Duration, overrun func(context.Context, int64, *Call) error) LeaseConfig {
	return LeaseConfig{
		Duration: 90 * time.Millisecond, CallTimeout: call,
		Acquire: func(context.Context) (int64, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.holder != 0 {
				return 0, ErrStandby
			}
			f.epoch++
			f.holder = f.epoch
			return f.epoch, nil
		},
		Renew: func(_ context.Context, epoch int64, _ *Call) error {
			f.renews.Add(1)
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.holder != epoch {
				return ErrLeaseLost
			}
			return nil
		},
		Release: func(_ context.Context, epoch int64) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.holder == epoch {
				f.holder = 0
			}
			return nil
		},
		Overrun:  overrun,
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnChange: func(c string) { f.mu.Lock(); f.changes = append(f.changes, c); f.mu.Unlock() },
	}
}

// The keeper renews while the client is busy, finds a lease taken over,
// cancels the batch in flight with ErrLeaseLost, and the next Acquire
// drops it.
func TestLeaseKeeperRenewsAndFindsLoss(t *testing.T) {
	f := &fakeLease{}
	l := NewLease(f.config(time.Second, nil))
	ctx := context.Background()
	if ok, err := l.Acquire(ctx); !ok || err != nil || l.Epoch() != 1 {
		t.Fatalf("Acquire: %v, %v, epoch %d", ok, err, l.Epoch())
	}
	if _, err := NewLease(f.config(time.Second, nil)).Acquire(ctx); !errors.Is(err, ErrStandby) {
		t.Fatalf("a second instance: %v; want ErrStandby", err)
	}
	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	err := l.Watch(&Call{Batch: &Batch{Cancel: cancel}}, func() error {
		deadline := time.Now().Add(5 * time.Second)
		for f.renews.Load() < 3 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond) // a batch longer than the lease
		}
		f.mu.Lock()
		f.holder = 99 // taken over
		f.mu.Unlock()
		<-bctx.Done()
		return context.Cause(bctx)
	})
	if !errors.Is(err, ErrLeaseLost) || f.renews.Load() < 3 {
		t.Fatalf("watched call: %v after %d renewals; want ErrLeaseLost after renewals", err, f.renews.Load())
	}
	if ok, err := l.Acquire(ctx); ok || !errors.Is(err, ErrStandby) {
		t.Fatalf("Acquire after the loss: %v, %v; want the loss dropped and a standby", ok, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.changes) != 2 || f.changes[0] != "acquired" || f.changes[1] != "lost" {
		t.Fatalf("changes %v", f.changes)
	}
}

// A call that overruns CallTimeout is failed by the keeper at once, through
// Overrun, even while it keeps running; Watch returns Overrun's error.
func TestLeaseWatchOverrun(t *testing.T) {
	f := &fakeLease{}
	overran := make(chan time.Duration, 1)
	start := time.Now()
	l := NewLease(f.config(50*time.Millisecond, func(_ context.Context, _ int64, c *Call) error {
		overran <- time.Since(start)
		c.Batch.Cancel(errors.New("overrun"))
		return errors.New("call overran")
	}))
	if _, err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	err := l.Watch(&Call{Start: start, Batch: &Batch{Cancel: func(error) {}}}, func() error {
		time.Sleep(200 * time.Millisecond) // ignores everything
		return nil
	})
	if err == nil || err.Error() != "call overran" {
		t.Fatalf("Watch: %v; want Overrun's error", err)
	}
	if d := <-overran; d < 50*time.Millisecond || d > 190*time.Millisecond {
		t.Fatalf("overrun after %s; want soon after the 50ms timeout, before the call returned", d)
	}
}
