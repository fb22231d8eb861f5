package conduit

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit/internal/dberr"
	"github.com/conduit-es/conduit/internal/dbgen"
	"github.com/conduit-es/conduit/internal/engine"
)

// EventsChannel is the LISTEN/NOTIFY channel that wakes projectors and the
// outbox relay after appends and enqueues. Notifications carry no payload:
// they are hints, and a worker that misses one still finds the work at its
// next poll.
const EventsChannel = dberr.EventsChannel

// newWakeups sets up s's wake-ups (the engine's): the notifier that sends
// NOTIFY after commits, coalesced, outside every append's transaction, and
// the one listener per Store that turns notifications into the in-process
// signal its workers wait on.
func (s *Store) newWakeups() {
	s.appended = engine.NewSignal()
	s.progress = engine.NewSignal()
	s.notifier = &engine.Notifier{Send: s.queries.NotifyEvents, Interval: s.cfg.NotifyInterval, Log: s.cfg.Logger}
	s.listener = engine.NewListener(EventsChannel,
		func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
		},
		func(ctx context.Context, conn *pgx.Conn) error { return dbgen.New(conn).ListenEvents(ctx) },
		s.appended.Notify, s.cfg.Logger)
}
