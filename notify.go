package conduit

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit/internal/dberr"
	"github.com/conduit-es/conduit/internal/dbgen"
)

// EventsChannel is the LISTEN/NOTIFY channel that wakes projectors after
// appends. Notifications carry no payload: they are hints, and a projector
// that misses one still finds the events at its next poll.
const EventsChannel = dberr.EventsChannel

// commitNotifier sends NOTIFY after appends have committed, coalesced: at
// most one notification is in flight, and appends that commit meanwhile are
// covered by one more. It runs outside every append's transaction, because
// a NOTIFY inside a transaction takes a cluster-wide lock at commit that
// serializes all notifying commits.
//
// Under load it sends at most one notification per Config.NotifyInterval:
// the first append after a quiet spell is notified at once, the appends of a
// busy spell together at the end of each interval.
type commitNotifier struct {
	store    *Store
	running  atomic.Bool
	dirty    atomic.Bool
	wg       sync.WaitGroup
	lastSent time.Time // owned by the running sender
}

// poke records that an append committed and starts a sender if none runs.
func (n *commitNotifier) poke() {
	n.dirty.Store(true)
	if n.running.CompareAndSwap(false, true) {
		n.wg.Add(1)
		go n.run()
	}
}

func (n *commitNotifier) run() {
	defer n.wg.Done()
	for {
		for n.dirty.Load() {
			if wait := time.Until(n.lastSent.Add(n.store.cfg.NotifyInterval)); wait > 0 {
				time.Sleep(wait) // coalesce: appends committing meanwhile ride along
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
				// Projectors still poll; a lost hint costs latency only.
				n.store.cfg.Logger.Debug("conduit: notify after append failed", slog.Any("error", err))
			}
		}
		n.running.Store(false)
		// An append may have set dirty after the loop and before running
		// was cleared, and seen running still true: go round again.
		if !n.dirty.Load() || !n.running.CompareAndSwap(false, true) {
			return
		}
	}
}

func (n *commitNotifier) send() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return n.store.queries.NotifyEvents(ctx)
}

// listener holds one connection that LISTENs on EventsChannel for every
// projector of a Store in this process, and turns notifications into the
// in-process wake-up signal. On every (re)connect it LISTENs first and then
// wakes everyone, so projectors catch up on what they missed while it was
// disconnected.
type listener struct {
	store *Store

	mu     sync.Mutex
	users  int
	cancel context.CancelFunc
	done   chan struct{}

	pid      atomic.Uint32 // backend pid of the current connection, 0 when down
	listened chan struct{} // closed at the first successful LISTEN
	once     sync.Once
}

func newListener(s *Store) *listener {
	return &listener{store: s, listened: make(chan struct{})}
}

// acquire starts the listener if it is not running; release stops it when
// its last user leaves.
func (l *listener) acquire() {
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

func (l *listener) release() {
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

func (l *listener) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	log := l.store.cfg.Logger
	backoff := newBackoff(50*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		err := l.listenOnce(ctx)
		if l.pid.Swap(0) != 0 {
			backoff.reset() // it got as far as LISTEN: start over
		}
		if ctx.Err() != nil {
			return
		}
		wait := backoff.next()
		log.Warn("conduit: listener disconnected; projectors poll until it is back",
			slog.String("channel", EventsChannel), slog.Any("error", err), slog.Duration("retry_in", wait))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (l *listener) listenOnce(ctx context.Context) error {
	cfg := l.store.pool.Config().ConnConfig.Copy()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if err := dbgen.New(conn).ListenEvents(ctx); err != nil {
		return err
	}
	l.pid.Store(conn.PgConn().PID())
	l.once.Do(func() { close(l.listened) })
	// Listening now: whatever committed before is found by the catch-up
	// this wake-up triggers; whatever commits after is notified.
	l.store.appended.notify(Position{})
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return nil
			}
			return err
		}
		l.store.appended.notify(Position{})
	}
}
