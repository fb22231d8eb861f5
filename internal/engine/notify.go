package engine

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit/internal/dberr"
)

// Notifier sends NOTIFY after work has committed, coalesced: at most one
// notification is in flight, and pokes that come meanwhile are covered by
// one more. It runs outside every writer's transaction, because a NOTIFY
// inside a transaction takes a cluster-wide lock at commit that serializes
// all notifying commits.
//
// Under load it sends at most one notification per Interval: the first
// poke after a quiet spell is notified at once, the pokes of a busy spell
// together at the end of each interval.
type Notifier struct {
	// Send sends one notification.
	Send func(ctx context.Context) error
	// Interval is the least time between two notifications.
	Interval time.Duration
	// Log gets a debug line when a notification fails (a lost hint costs
	// latency only: readers poll).
	Log *slog.Logger

	running  atomic.Bool
	dirty    atomic.Bool
	wg       sync.WaitGroup
	lastSent time.Time // owned by the running sender
}

// Poke records that work committed and starts a sender if none runs.
func (n *Notifier) Poke() {
	n.dirty.Store(true)
	if n.running.CompareAndSwap(false, true) {
		n.wg.Add(1)
		go n.run()
	}
}

// Wait waits for the notifications in flight.
func (n *Notifier) Wait() { n.wg.Wait() }

func (n *Notifier) run() {
	defer n.wg.Done()
	for {
		for n.dirty.Load() {
			if wait := time.Until(n.lastSent.Add(n.Interval)); wait > 0 {
				time.Sleep(wait) // coalesce: commits meanwhile ride along
			}
			n.dirty.Store(false)
			n.lastSent = time.Now()
			err := n.send()
			if dberr.IsTransient(err) {
				// Likely a pooled connection that died (a restart, a
				// terminated backend): the pool hands out another.
				err = n.send()
			}
			if err != nil {
				n.Log.Debug("conduit: notify after commit failed", slog.Any("error", err))
			}
		}
		n.running.Store(false)
		// A poke may have set dirty after the loop and before running was
		// cleared, and seen running still true: go round again.
		if !n.dirty.Load() || !n.running.CompareAndSwap(false, true) {
			return
		}
	}
}

func (n *Notifier) send() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.Send(ctx)
}

// Listener holds one connection that LISTENs for every worker of a Store in
// this process, and turns notifications into Wake calls. On every
// (re)connect it LISTENs first and then calls Wake, so workers catch up on
// what they missed while it was disconnected. It runs while it has users
// (Acquire, Release).
type Listener struct {
	connect func(ctx context.Context) (*pgx.Conn, error)
	listen  func(ctx context.Context, conn *pgx.Conn) error
	wake    func()
	log     *slog.Logger
	channel string

	mu     sync.Mutex
	users  int
	cancel context.CancelFunc
	done   chan struct{}

	pid      atomic.Uint32 // backend pid of the current connection, 0 when down
	listened chan struct{} // closed at the first successful LISTEN
	once     sync.Once
}

// NewListener returns a listener that opens connections with connect, runs
// listen on each (the LISTEN statements of channel), and calls wake after
// each LISTEN and each notification.
func NewListener(channel string, connect func(ctx context.Context) (*pgx.Conn, error),
	listen func(ctx context.Context, conn *pgx.Conn) error, wake func(), log *slog.Logger,
) *Listener {
	return &Listener{connect: connect, listen: listen, wake: wake, log: log, channel: channel, listened: make(chan struct{})}
}

// PID is the backend pid of the listening connection, 0 while down.
func (l *Listener) PID() uint32 { return l.pid.Load() }

// Listened is closed once the first LISTEN has succeeded.
func (l *Listener) Listened() <-chan struct{} { return l.listened }

// Acquire starts the listener if it is not running; Release stops it when
// its last user leaves.
func (l *Listener) Acquire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.users++
	if l.users == 1 {
		ctx, cancel := context.WithCancel(context.Background())
		l.cancel = cancel
		l.done = make(chan struct{})
		go l.run(ctx, l.done)
	}
}

// Release gives back an Acquire.
func (l *Listener) Release() {
	l.mu.Lock()
	l.users--
	var done chan struct{}
	if l.users == 0 {
		l.cancel()
		done = l.done
	}
	l.mu.Unlock()
	if done != nil {
		<-done
	}
}

func (l *Listener) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	backoff := NewBackoff(50*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		err := l.listenOnce(ctx)
		if l.pid.Swap(0) != 0 {
			backoff.Reset() // it got as far as LISTEN: start over
		}
		if ctx.Err() != nil {
			return
		}
		wait := backoff.Next()
		l.log.Warn("conduit: listener disconnected; workers poll until it is back",
			slog.String("channel", l.channel), slog.Any("error", err), slog.Duration("retry_in", wait))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (l *Listener) listenOnce(ctx context.Context) error {
	conn, err := l.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if err := l.listen(ctx, conn); err != nil {
		return err
	}
	l.pid.Store(conn.PgConn().PID())
	l.once.Do(func() { close(l.listened) })
	// Listening now: whatever committed before is found by the catch-up
	// this wake-up triggers; whatever commits after is notified.
	l.wake()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return nil
			}
			return err
		}
		l.wake()
	}
}
