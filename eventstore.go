package conduit

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/conduit-es/conduit/internal/dberr"
	"github.com/conduit-es/conduit/internal/dbgen"
	"github.com/conduit-es/conduit/internal/engine"
)

// Defaults and limits of Config fields. A zero field means its default.
const (
	// MaxEventSizeDefault is the default Config.MaxEventSize: 1 MiB.
	MaxEventSizeDefault = 1 << 20
	// MaxEventSizeLimit is the largest Config.MaxEventSize: 64 MiB.
	MaxEventSizeLimit = 64 << 20

	// MaxAppendSizeDefault is the default Config.MaxAppendSize: 16 MiB, or
	// Config.MaxEventSize if that is larger.
	MaxAppendSizeDefault = 16 << 20
	// MaxAppendSizeLimit is the largest Config.MaxAppendSize: 512 MiB (a
	// PostgreSQL protocol message holds at most 1 GiB, and the data travels
	// as text).
	MaxAppendSizeLimit = 512 << 20

	// ReadPageSizeDefault is the default Config.ReadPageSize.
	ReadPageSizeDefault = 1000
	// ReadPageSizeLimit is the largest Config.ReadPageSize.
	ReadPageSizeLimit = 1_000_000

	// NotifyIntervalDefault is the default Config.NotifyInterval.
	NotifyIntervalDefault = 5 * time.Millisecond
	// NotifyIntervalLimit is the longest Config.NotifyInterval.
	NotifyIntervalLimit = time.Minute

	// MaxAppendBatchDefault is the default Config.MaxAppendBatch.
	MaxAppendBatchDefault = 64
	// MaxAppendBatchLimit is the largest Config.MaxAppendBatch.
	MaxAppendBatchLimit = 10_000
)

// Config configures a Store. The zero value (or a nil *Config) means
// defaults; a field out of its range makes NewStore return a *ConfigError.
type Config struct {
	// MaxEventSize is the largest event accepted, in bytes of data plus
	// metadata: 1 to MaxEventSizeLimit (64 MiB). Defaults to
	// MaxEventSizeDefault (1 MiB).
	MaxEventSize int

	// MaxAppendSize is the most bytes of data plus metadata one append
	// takes, all its events together, checked before anything is sent:
	// MaxEventSize to MaxAppendSizeLimit (512 MiB). Defaults to
	// MaxAppendSizeDefault (16 MiB), or MaxEventSize if that is larger.
	MaxAppendSize int

	// ReadPageSize is how many events ReadStream and ReadAll fetch with
	// their first statement. Their rows stream from the wire, so memory use
	// does not grow with it; a larger page costs fewer round trips and keeps
	// one statement, and its snapshot, open longer. A read's later pages
	// double while its loop keeps up (each page read and handled within
	// 20ms), up to 16 times ReadPageSize, and halve again, down to it,
	// after a page that took over 100ms. 1 to ReadPageSizeLimit. Defaults
	// to ReadPageSizeDefault (1,000).
	ReadPageSize int

	// Projections run synchronously inside every append's transaction, in
	// this order, for each appended event. An error from any of them rolls
	// back the append. Defaults to none.
	Projections []Projection

	// DisableAppendBatching makes every Append a statement and a
	// transaction of its own. By default, the Appends of one Store that
	// arrive while another is in flight are sent together, as one statement
	// in one transaction, each with its own expected version, idempotency
	// and result; an Append that finds nothing in flight goes at once
	// (unless a batch of several was just answered: then it waits a little
	// for that batch's callers, see the package documentation). With
	// synchronous projections (Config.Projections) appends always go alone,
	// and AppendTx always runs in the caller's transaction. Defaults to
	// false.
	DisableAppendBatching bool

	// MaxAppendBatch is the most Appends sent together in one batch, 1 to
	// MaxAppendBatchLimit (10,000); a batch also holds at most
	// Config.MaxAppendSize bytes of data and metadata (but always at least
	// one append). 1 sends every append alone, like DisableAppendBatching.
	// Defaults to MaxAppendBatchDefault (64).
	MaxAppendBatch int

	// Outbox maps event types to outbox messages, enqueued in the same
	// statement as the events they come from (see OutboxRule). At most one
	// rule per event type. Defaults to none.
	Outbox []OutboxRule

	// DisableNotify stops the NOTIFY that Append sends (coalesced, after
	// commit) to wake projectors in other processes; they then find new
	// events at their next poll. Projectors in this process are woken either
	// way. Defaults to false.
	DisableNotify bool

	// NotifyInterval is the least time between two of those NOTIFYs: the
	// first append after a quiet spell is notified at once, those of a busy
	// spell together, so the notifications cost appends little under load.
	// Up to NotifyIntervalLimit (1 minute). Defaults to
	// NotifyIntervalDefault (5 ms).
	NotifyInterval time.Duration

	// MaxProjectorConns is the most connections of the pool that this
	// Store's projectors hold at once for their batches, 1 to the pool's
	// MaxConns: the rest of the pool stays free for appends and reads,
	// which never wait for a projector's batch. A batch holds its
	// connection while it applies its events (at most
	// ProjectorConfig.HandlerTimeout/10 and one handler call); projectors
	// beyond the budget wait their turn, keeping their leases. A projector
	// whose next batch follows at once keeps its connection for it (the
	// next transaction begun in the round trip of the commit) unless another
	// projector's batch waits for the budget or every connection of the pool
	// is taken. A
	// projector catching up also reads its next events ahead while a batch
	// commits, on a second connection of the budget when one is free at
	// once (so with a budget of 1 it does not), and with two statements at
	// once on a second and a third when both are. A
	// projector's other statements (taking and renewing its lease,
	// counting a failure) are single short statements on the pool. To give
	// projectors a pool of their own, run them on a Store made over that
	// pool. Defaults to a quarter of the pool's MaxConns, at least 1 (so
	// with a pool of 1 to 3 connections appends can wait for a batch).
	MaxProjectorConns int

	// Logger receives structured logs. Defaults to slog.Default() showing
	// warnings and errors only (Conduit logs lease changes and the like at
	// Info and Debug: pass a logger of your own to see them).
	Logger *slog.Logger

	// MeterProvider receives Conduit's metrics (see README's
	// "Observability" for the instruments). Defaults to none: the
	// OpenTelemetry API's no-op provider; Conduit never installs an SDK.
	MeterProvider metric.MeterProvider

	// TracerProvider receives Conduit's spans: one per append, per
	// projector batch and per relay batch. Defaults to none (no-op).
	TracerProvider trace.TracerProvider
}

// withDefaults fills in defaults; poolSize is the pool's MaxConns.
func (c *Config) withDefaults(poolSize int) (Config, error) {
	var out Config
	if c != nil {
		out = *c
	}
	setDefault(&out.MaxEventSize, MaxEventSizeDefault)
	setDefault(&out.MaxAppendSize, max(MaxAppendSizeDefault, out.MaxEventSize))
	setDefault(&out.ReadPageSize, ReadPageSizeDefault)
	setDefault(&out.NotifyInterval, NotifyIntervalDefault)
	setDefault(&out.MaxProjectorConns, max(1, poolSize/4))
	setDefault(&out.MaxAppendBatch, MaxAppendBatchDefault)
	if err := checkRanges(
		bytesRange("Config.MaxEventSize", out.MaxEventSize, 1, MaxEventSizeLimit),
		bytesRange("Config.MaxAppendSize", out.MaxAppendSize, out.MaxEventSize, MaxAppendSizeLimit),
		countRange("Config.ReadPageSize", out.ReadPageSize, 1, ReadPageSizeLimit),
		durationRange("Config.NotifyInterval", out.NotifyInterval, 1, NotifyIntervalLimit),
		countRange("Config.MaxProjectorConns", out.MaxProjectorConns, 1, max(1, poolSize)),
		countRange("Config.MaxAppendBatch", out.MaxAppendBatch, 1, MaxAppendBatchLimit),
	); err != nil {
		return out, err
	}
	names := map[string]bool{}
	for i, p := range out.Projections {
		field := fmt.Sprintf("Config.Projections[%d]", i)
		if p == nil {
			return out, &ConfigError{Field: field, Reason: "nil"}
		}
		if err := checkName(field, p.Name()); err != nil {
			return out, err
		}
		if names[p.Name()] {
			return out, &ConfigError{Field: field, Reason: fmt.Sprintf("name %q is used twice", p.Name())}
		}
		names[p.Name()] = true
	}
	out.Projections = append([]Projection(nil), out.Projections...)
	out.Outbox = append([]OutboxRule(nil), out.Outbox...)
	if out.Logger == nil {
		out.Logger = slog.New(minLevel{slog.Default().Handler(), slog.LevelWarn})
	}
	return out, nil
}

// Store appends and reads events. It is safe for concurrent use.
type Store struct {
	pool     *pgxpool.Pool
	queries  *dbgen.Queries
	cfg      Config
	appended *engine.Signal   // wakes projectors and relays in this process
	progress *engine.Signal   // a projector in this process moved its checkpoint
	notifier *engine.Notifier // NOTIFY after commits
	listener *engine.Listener // LISTEN for this process's workers
	// projectorConns holds a token per pool connection a projector's batch
	// holds (Config.MaxProjectorConns); projectorWaiters counts the
	// batches waiting for one.
	projectorConns   chan struct{}
	projectorWaiters atomic.Int32

	// outboxRules are Config.Outbox by event type.
	outboxRules map[string]*OutboxRule

	tel    *telemetry
	health healthState

	// projectors names the Projectors made on this Store (see WaitFor).
	projectors projectionNames

	// batcher sends concurrent Appends together (Config.DisableAppendBatching).
	batcher appendBatcher
}

// NewStore returns a Store over pool. It does not touch the database; run
// Migrate first. A nil cfg means defaults.
func NewStore(pool *pgxpool.Pool, cfg *Config) (*Store, error) {
	if pool == nil {
		return nil, errors.New("conduit: NewStore: nil pool")
	}
	c, err := cfg.withDefaults(int(pool.Config().MaxConns))
	if err != nil {
		return nil, err
	}
	rules, err := checkOutboxRules(c.Outbox)
	if err != nil {
		return nil, err
	}
	tel, err := newTelemetry(c.MeterProvider, c.TracerProvider)
	if err != nil {
		return nil, fmt.Errorf("conduit: NewStore: instruments: %w", err)
	}
	s := &Store{pool: pool, queries: dbgen.New(pool), cfg: c, outboxRules: rules, tel: tel,
		projectorConns: make(chan struct{}, c.MaxProjectorConns),
		batcher: appendBatcher{maxAppends: c.MaxAppendBatch, maxBytes: c.MaxAppendSize,
			lanes: appendLanes, stallAfter: appendStallAfter}}
	s.newWakeups()
	if err := s.registerGauges(c.MeterProvider); err != nil {
		return nil, fmt.Errorf("conduit: NewStore: gauges: %w", err)
	}
	return s, nil
}

// takeProjectorConn waits for a slot of the projectors' connection budget
// (Config.MaxProjectorConns), or for ctx's end. release gives it back; it
// may be called more than once.
func (s *Store) takeProjectorConn(ctx context.Context) (release func(), err error) {
	if release, ok := s.tryTakeProjectorConn(); ok {
		return release, nil
	}
	s.projectorWaiters.Add(1)
	defer s.projectorWaiters.Add(-1)
	select {
	case s.projectorConns <- struct{}{}:
		return sync.OnceFunc(func() { <-s.projectorConns }), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// connsWanted reports that a projector's batch waits for a slot of the
// budget, or that every connection of the pool is taken (so that an append
// or a lease's renewal may be waiting for one): a projector then gives its
// connection back between batches rather than keep it for the next.
func (s *Store) connsWanted() bool {
	if s.projectorWaiters.Load() > 0 {
		return true
	}
	st := s.pool.Stat()
	return st.AcquiredConns() >= st.MaxConns()
}

// tryTakeProjectorConn takes a slot of the projectors' connection budget if
// one is free at once.
func (s *Store) tryTakeProjectorConn() (release func(), ok bool) {
	select {
	case s.projectorConns <- struct{}{}:
		return sync.OnceFunc(func() { <-s.projectorConns }), true
	default:
		return nil, false
	}
}

// Close waits for notifications in flight. It does not close the pool.
// Stop projectors (cancel their Run) before.
func (s *Store) Close() {
	s.notifier.Wait()
}

// Notify tells projectors that events were committed: those in this process
// at once, those in other processes by a NOTIFY (coalesced, unless
// Config.DisableNotify). Append calls it after its commit; call it after
// committing a transaction in which you called AppendTx, or use InTx, which
// does. Without it projectors still find the events at their next poll.
func (s *Store) Notify() {
	s.appended.Notify()
	if !s.cfg.DisableNotify {
		s.notifier.Poke()
	}
}

// InTx runs fn in a transaction, commits it if fn returns nil (else rolls
// back), and then calls Notify. Use it around AppendTx.
func (s *Store) InTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	if err := pgx.BeginFunc(ctx, s.pool, fn); err != nil {
		return err
	}
	s.Notify()
	return nil
}

// Pool returns the pool the store was made with.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// AppendResult is what an append returns.
type AppendResult struct {
	// Version is the stream's version after the append (its last event's).
	Version int64
	// Position is the last appended event's place in the global log; pass
	// it to a projector's WaitFor to read your own writes.
	Position Position
	// Duplicate reports an idempotent retry: the events were already stored
	// at this place, and nothing was written.
	Duplicate bool
}

// Append appends events to a stream atomically, if the stream is at the
// expected version, in one round trip whatever the number of events (at most
// MaxEventsPerAppend, and Config.MaxAppendSize bytes in all). With
// synchronous projections configured it runs them in the same transaction.
//
// Appends that arrive while another of the Store is in flight are sent
// together, in one statement and one transaction, each with its own
// expected version, result and error (see Config.DisableAppendBatching and
// the package documentation, "Batching concurrent appends"); with
// synchronous projections every append goes alone.
//
// Append never writes into events. Their ids make a retry safe: resending
// the same events to the same place (after a lost commit acknowledgement,
// say) writes nothing and returns a result with Duplicate set. NewEvent
// gives each event its id; an EventData built by hand with a zero ID gets a
// fresh id at each call, so such an event is stored again by every retry.
//
// With Any and StreamExists a concurrent append to the same stream is never
// a conflict: appends to one stream are serialized, and this one goes after
// it.
//
// Errors: *ValidationError (ErrInvalidEvent) before anything is sent,
// *VersionConflictError (ErrVersionConflict), *DuplicateEventIDError
// (ErrDuplicateEventID), *ProjectionError (ErrProjection),
// *RestoredDatabaseError (ErrRestoredDatabase), or a database error. Use
// IsRefused and IsOutcomeUnknown to decide on a retry.
func (s *Store) Append(ctx context.Context, streamID string, expected ExpectedVersion, events ...EventData) (res AppendResult, err error) {
	ctx, end := s.tel.startAppend(ctx, streamID, len(events))
	defer func() { end(res, err) }()
	return s.append(ctx, streamID, expected, events)
}

func (s *Store) append(ctx context.Context, streamID string, expected ExpectedVersion, events []EventData) (AppendResult, error) {
	a, err := s.newAppend(ctx, streamID, expected, events)
	if err != nil {
		return AppendResult{}, err
	}
	var res AppendResult
	if len(s.cfg.Projections) == 0 && !s.cfg.DisableAppendBatching && s.cfg.MaxAppendBatch > 1 {
		res, err = s.appendBatched(ctx, a)
	} else {
		res, err = s.appendAlone(ctx, a, events, false)
	}
	if err != nil {
		return AppendResult{}, err
	}
	if !res.Duplicate {
		s.Notify()
	}
	return res, nil
}

// appendAlone is an Append in a transaction of its own, with the
// synchronous projections if any (events are the input, for them).
// explainFirst says a batch wrote nothing for it: ask why before anything
// else (see appendEvents).
func (s *Store) appendAlone(ctx context.Context, a appendArgs, events []EventData, explainFirst bool) (AppendResult, error) {
	for {
		var (
			res AppendResult
			err error
		)
		if len(s.cfg.Projections) == 0 {
			// Each statement one implicit transaction, one round trip.
			res, _, err = s.appendEvents(ctx, s.queries, a, false, explainFirst)
		} else {
			err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
				var stored []Event
				res, stored, err = s.appendEvents(ctx, s.queries.WithTx(tx), a, false, explainFirst)
				if err != nil || res.Duplicate {
					return err
				}
				return applyProjections(ctx, tx, s.cfg.Projections, withData(stored, events))
			})
		}
		// The stream's lock was granted after a concurrent append had
		// committed, and the head read before it was stale: nothing was
		// written, append again (a new transaction reads the new head).
		if dberr.Classify(err) == dberr.StreamVersionTaken {
			if ctx.Err() != nil {
				// Nothing was written, and there is no time to append
				// again: no conflict, the outcome is the context's.
				return AppendResult{}, fmt.Errorf("conduit: append to stream %q: %w", a.StreamID, ctx.Err())
			}
			explainFirst = false
			continue
		}
		if err != nil {
			return AppendResult{}, s.appendError(ctx, err, a)
		}
		return res, nil
	}
}

// AppendTx is Append inside the caller's transaction: the events, and the
// rows written by synchronous projections, commit or roll back with it.
//
// Refusals (a version conflict, an idempotent retry, invalid input, a
// transaction-order refusal) leave tx usable. A duplicate event id found by
// the database's unique index, a projection error or a database error leave
// it aborted. Appends to one stream are serialized by a lock held until tx
// ends, so a concurrent append with Any or StreamExists goes after this one
// once tx commits.
//
// Besides Append's errors it may return *TransactionOrderError
// (ErrTransactionOrder) when tx had written before it appended and a younger
// transaction has appended to the stream since, or (Config.Outbox) has
// enqueued to a key of the events' messages since (see EnqueueTx; tx is
// then aborted): roll back and retry the transaction.
//
// AppendTx cannot know when tx commits, so it wakes no projector: call
// Notify after the commit, or use InTx.
func (s *Store) AppendTx(ctx context.Context, tx pgx.Tx, streamID string, expected ExpectedVersion, events ...EventData) (res AppendResult, err error) {
	ctx, end := s.tel.startAppend(ctx, streamID, len(events))
	defer func() { end(res, err) }()
	return s.appendTx(ctx, tx, streamID, expected, events)
}

func (s *Store) appendTx(ctx context.Context, tx pgx.Tx, streamID string, expected ExpectedVersion, events []EventData) (AppendResult, error) {
	a, err := s.newAppend(ctx, streamID, expected, events)
	if err != nil {
		return AppendResult{}, err
	}
	q := s.queries.WithTx(tx)
	res, stored, err := s.appendEvents(ctx, q, a, true, false)
	if err == nil && !res.Duplicate && a.msgs.len() > 0 {
		var refused *TransactionOrderError
		if err = enqueue(ctx, q, &a.msgs); errors.As(err, &refused) {
			// The events are written; without their messages they must
			// never commit.
			_ = q.TransactionAbort(ctx, err.Error())
		}
	}
	if err == nil && !res.Duplicate {
		if err = applyProjections(ctx, tx, s.cfg.Projections, withData(stored, events)); err != nil {
			// The events are written; make sure they never commit. (If the
			// projection's own SQL failed, tx is aborted already.)
			_ = q.TransactionAbort(ctx, err.Error())
		}
	}
	if err != nil {
		return AppendResult{}, s.appendError(ctx, err, a)
	}
	return res, nil
}

// appendArgs is a validated append: the query's arrays and the event ids.
type appendArgs struct {
	dbgen.EventAppendManyParams
	expected ExpectedVersion
	ids      []uuid.UUID
	msgs     outboxArgs // made by Config.Outbox's rules
}

// newAppend validates input and builds the query's arrays. It reads events
// and never writes into them: a zero id gets a fresh id here only.
func (s *Store) newAppend(ctx context.Context, streamID string, expected ExpectedVersion, events []EventData) (appendArgs, error) {
	if err := validateStreamID(streamID); err != nil {
		return appendArgs{}, err
	}
	if !expected.valid() {
		return appendArgs{}, &ValidationError{Field: "expected version", Index: -1, Reason: expected.invalidReason()}
	}
	switch {
	case len(events) == 0:
		return appendArgs{}, &ValidationError{Field: "events", Index: -1, Reason: "none given"}
	case len(events) > MaxEventsPerAppend:
		return appendArgs{}, &ValidationError{Field: "events", Index: -1, Err: ErrAppendTooLarge,
			Reason: fmt.Sprintf("%d events, limit %d per append", len(events), MaxEventsPerAppend)}
	}
	total := 0
	for i := range events {
		total += len(events[i].Data) + len(events[i].Metadata)
	}
	if total > s.cfg.MaxAppendSize {
		return appendArgs{}, &ValidationError{Field: "events", Index: -1, Err: ErrAppendTooLarge,
			Reason: fmt.Sprintf("data and metadata are %d bytes in all, limit %d per append (Config.MaxAppendSize)",
				total, s.cfg.MaxAppendSize)}
	}
	a := appendArgs{expected: expected, ids: make([]uuid.UUID, len(events))}
	a.EventAppendManyParams = dbgen.EventAppendManyParams{
		StreamID: streamID,
		Expected: int64(expected),
		EventIds: make([]string, len(events)),
		Types:    make([]string, len(events)),
		Data:     make([]string, len(events)),
		Metadata: make([]string, len(events)),
		EveryRow: len(s.cfg.Projections) > 0, // synchronous projections need every stored event
	}
	tp := s.tel.traceparent(ctx) // stored in the metadata: projectors' spans link back
	var seen map[uuid.UUID]int
	if len(events) > 1 {
		seen = make(map[uuid.UUID]int, len(events))
	}
	for i := range events {
		e := &events[i]
		if err := validateEvent(i, e, s.cfg.MaxEventSize); err != nil {
			return appendArgs{}, err
		}
		id := e.ID
		if id == uuid.Nil {
			var err error
			if id, err = uuid.NewV7(); err != nil {
				return appendArgs{}, fmt.Errorf("conduit: make event id: %w", err)
			}
		}
		if seen != nil {
			if j, dup := seen[id]; dup {
				return appendArgs{}, &ValidationError{Field: "event id", Index: i,
					Reason: fmt.Sprintf("%s is also the id of event %d", id, j)}
			}
			seen[id] = i
		}
		a.ids[i] = id
		a.EventIds[i] = id.String()
		a.Types[i] = e.Type
		a.Data[i] = string(e.Data)
		a.Metadata[i] = string(withTraceparent(e.Metadata, tp))
		if r := s.outboxRules[e.Type]; r != nil {
			m, err := r.message(Event{ID: id, StreamID: streamID, Type: e.Type, Data: e.Data, Metadata: e.Metadata})
			if err == nil {
				err = a.msgs.add(i, &m, s.cfg.MaxEventSize)
			}
			if err != nil {
				var inner *ValidationError
				ve := &ValidationError{Field: "outbox message", Index: i, Reason: fmt.Sprintf("Config.Outbox rule for %q: %v", e.Type, err)}
				if errors.As(err, &inner) {
					ve.Err = inner.Err
				}
				return appendArgs{}, ve
			}
		}
	}
	return a, nil
}

// appendEvents appends in one statement when nothing stands in the way, and
// only when that statement writes nothing asks conduit.explain_append why,
// turning the answer into a typed refusal or an idempotent result. When a
// concurrent append took the stream's next version meanwhile, nothing stands
// in the way any more: it appends again, after it. callerTx says q runs in
// the caller's transaction (AppendTx), which no error may abort. It returns
// the stored events (without data, see withData) only when synchronous
// projections need them. explainFirst skips the first statement: a batch
// ran it already, and wrote nothing.
func (s *Store) appendEvents(ctx context.Context, q *dbgen.Queries, a appendArgs, callerTx, explainFirst bool) (AppendResult, []Event, error) {
	for ; ; explainFirst = false {
		var rows []dbgen.EventAppendManyRow
		if !explainFirst {
			var err error
			if rows, err = s.appendFast(ctx, q, a, callerTx); err != nil {
				return AppendResult{}, nil, err
			}
		}
		if len(rows) > 0 {
			if !a.EveryRow {
				last := rows[len(rows)-1]
				return AppendResult{Version: last.StreamVersion,
					Position: Position{TransactionID: last.TransactionID, GlobalPosition: last.GlobalPosition}}, nil, nil
			}
			return storedEvents(a, rows, false)
		}
		why, err := q.EventAppendExplain(ctx, dbgen.EventAppendExplainParams{
			StreamID: a.StreamID, Expected: a.Expected, EventIds: a.EventIds,
		})
		if err != nil {
			return AppendResult{}, nil, err
		}
		if len(why) == 0 {
			return AppendResult{}, nil, errors.New("conduit: explain_append returned no rows")
		}
		first := why[0]
		switch first.Status {
		case dberr.StatusOK:
			if err := ctx.Err(); err != nil {
				return AppendResult{}, nil, err
			}
			continue
		case dberr.StatusDuplicate:
			stored := make([]dbgen.EventAppendManyRow, len(why))
			for i, r := range why {
				stored[i] = dbgen.EventAppendManyRow{StreamVersion: r.StreamVersion,
					TransactionID: r.TransactionID, GlobalPosition: r.GlobalPosition, RecordedAt: r.RecordedAt}
			}
			return storedEvents(a, stored, true)
		case dberr.StatusVersionConflict:
			return AppendResult{}, nil, &VersionConflictError{StreamID: a.StreamID, Expected: a.expected, Actual: first.StreamVersion}
		case dberr.StatusEventIDConflict:
			return AppendResult{}, nil, &DuplicateEventIDError{EventID: first.ConflictEventID, StreamID: first.ConflictStream, Version: first.StreamVersion}
		case dberr.StatusTransactionOrder:
			return AppendResult{}, nil, &TransactionOrderError{StreamID: a.StreamID, Version: first.StreamVersion}
		case dberr.StatusRestoredDatabase:
			return AppendResult{}, nil, s.restoredDatabase(ctx)
		}
		return AppendResult{}, nil, fmt.Errorf("conduit: explain_append returned unknown status %q", first.Status)
	}
}

// appendFast runs the single-statement append: rows oldest first, none when
// it wrote nothing. In the caller's transaction it never fails on a race.
func (s *Store) appendFast(ctx context.Context, q *dbgen.Queries, a appendArgs, callerTx bool) ([]dbgen.EventAppendManyRow, error) {
	var (
		rows []dbgen.EventAppendManyRow
		err  error
	)
	switch {
	case callerTx:
		var txRows []dbgen.EventAppendTxRow
		txRows, err = q.EventAppendTx(ctx, dbgen.EventAppendTxParams(a.EventAppendManyParams))
		rows = make([]dbgen.EventAppendManyRow, len(txRows))
		for i, r := range txRows {
			rows[i] = dbgen.EventAppendManyRow(r)
		}
	case len(a.ids) == 1 && a.msgs.len() == 1:
		row, err := q.EventAppendOneOutbox(ctx, dbgen.EventAppendOneOutboxParams{
			StreamID: a.StreamID, EventID: a.EventIds[0], EventType: a.Types[0], Data: a.Data[0],
			Metadata: a.Metadata[0], Expected: a.Expected,
			MessageID: a.msgs.ids[0], Topic: a.msgs.topics[0], Key: a.msgs.keys[0], Payload: a.msgs.payloads[0], Headers: a.msgs.headers[0],
		})
		return oneRow(dbgen.EventAppendManyRow(row), err)
	case a.msgs.len() > 0:
		var outRows []dbgen.EventAppendManyOutboxRow
		outRows, err = q.EventAppendManyOutbox(ctx, dbgen.EventAppendManyOutboxParams{
			StreamID: a.StreamID, Expected: a.Expected, EventIds: a.EventIds, Types: a.Types, Data: a.Data,
			Metadata: a.Metadata, EveryRow: a.EveryRow,
			MessageIds: a.msgs.ids, Topics: a.msgs.topics, Keys: a.msgs.keys, Payloads: a.msgs.payloads, Headers: a.msgs.headers,
		})
		rows = make([]dbgen.EventAppendManyRow, len(outRows))
		for i, r := range outRows {
			rows[i] = dbgen.EventAppendManyRow(r)
		}
	case len(a.ids) == 1:
		row, err := q.EventAppendOne(ctx, dbgen.EventAppendOneParams{
			StreamID: a.StreamID, EventID: a.EventIds[0], EventType: a.Types[0], Data: a.Data[0],
			Metadata: a.Metadata[0], Expected: a.Expected,
		})
		return oneRow(dbgen.EventAppendManyRow(row), err)
	default:
		rows, err = q.EventAppendMany(ctx, a.EventAppendManyParams)
	}
	slices.Reverse(rows) // the queries return newest first
	return rows, err
}

// oneRow is the rows of a single-event append statement: none when it
// wrote nothing (pgx.ErrNoRows).
func oneRow(row dbgen.EventAppendManyRow, err error) ([]dbgen.EventAppendManyRow, error) {
	switch {
	case err == nil:
		return []dbgen.EventAppendManyRow{row}, nil
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	}
	return nil, err
}

// storedEvents builds the result and the stored events from one row per
// event; duplicate marks an idempotent retry.
func storedEvents(a appendArgs, rows []dbgen.EventAppendManyRow, duplicate bool) (AppendResult, []Event, error) {
	if len(rows) != len(a.ids) {
		return AppendResult{}, nil, fmt.Errorf("conduit: append returned %d rows for %d events", len(rows), len(a.ids))
	}
	stored := make([]Event, len(rows))
	for i, r := range rows {
		stored[i] = Event{
			StreamID:      a.StreamID,
			StreamVersion: r.StreamVersion,
			Position:      Position{TransactionID: r.TransactionID, GlobalPosition: r.GlobalPosition},
			ID:            a.ids[i],
			Type:          a.Types[i],
			RecordedAt:    r.RecordedAt,
		}
	}
	last := stored[len(stored)-1]
	return AppendResult{Version: last.StreamVersion, Position: last.Position, Duplicate: duplicate}, stored, nil
}

// withData fills stored events' data and metadata from the input.
func withData(stored []Event, in []EventData) []Event {
	for i := range stored {
		stored[i].Data = in[i].Data
		stored[i].Metadata = in[i].Metadata
	}
	return stored
}

// StreamVersion returns the stream's current version: 0 if it has no events.
func (s *Store) StreamVersion(ctx context.Context, streamID string) (int64, error) {
	return s.streamVersion(ctx, s.queries, streamID)
}

// StreamVersionTx is StreamVersion inside the caller's transaction: it sees
// the transaction's own appends (and, under REPEATABLE READ, its snapshot).
func (s *Store) StreamVersionTx(ctx context.Context, tx pgx.Tx, streamID string) (int64, error) {
	return s.streamVersion(ctx, s.queries.WithTx(tx), streamID)
}

func (s *Store) streamVersion(ctx context.Context, q *dbgen.Queries, streamID string) (int64, error) {
	if err := validateStreamID(streamID); err != nil {
		return 0, err
	}
	v, err := q.StreamVersionGet(ctx, streamID)
	if err != nil {
		return 0, s.dbError(ctx, err, fmt.Sprintf("version of stream %q", streamID))
	}
	return v, nil
}

// ReadStream yields the stream's events from fromVersion (1: the start) in
// version order, in pages of Config.ReadPageSize events and more (see there). A
// stream with no events yields nothing. The first error ends the sequence.
func (s *Store) ReadStream(ctx context.Context, streamID string, fromVersion int64) iter.Seq2[Event, error] {
	return s.readStream(ctx, s.queries, streamID, fromVersion)
}

// ReadStreamTx is ReadStream inside the caller's transaction, for a decision
// that must see the transaction's own appends, or that reads and appends in
// one transaction (see Entity.UpdateTx). Finish iterating before using tx
// for anything else.
func (s *Store) ReadStreamTx(ctx context.Context, tx pgx.Tx, streamID string, fromVersion int64) iter.Seq2[Event, error] {
	return s.readStream(ctx, s.queries.WithTx(tx), streamID, fromVersion)
}

func (s *Store) readStream(ctx context.Context, q *dbgen.Queries, streamID string, fromVersion int64) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		if err := validateStreamID(streamID); err != nil {
			yield(Event{}, err)
			return
		}
		from := max(fromVersion, 1)
		pages := newPageSizer(s.cfg.ReadPageSize)
		for {
			n, stopped, size := 0, false, pages.begin()
			err := q.EventListByStreamEach(ctx, dbgen.EventListByStreamParams{
				StreamID: streamID, FromVersion: from, MaxCount: int32(size),
			}, func(r dbgen.ConduitEvent) error {
				n++
				from = r.StreamVersion + 1
				if !yield(eventFromRow(r), nil) {
					stopped = true
					return errStopReading
				}
				return nil
			})
			switch {
			case stopped:
				return
			case err != nil:
				yield(Event{}, s.dbError(ctx, err, fmt.Sprintf("read stream %q", streamID)))
				return
			case n < size:
				return
			}
			pages.end()
		}
	}
}

// A read's pages grow while its reader keeps up: see pageSizer.
const (
	readPageGrowth = 16                    // the largest page, in ReadPageSizes
	readPageQuick  = 20 * time.Millisecond // a page read and consumed faster than this: the next is twice as large
	readPageSlow   = 100 * time.Millisecond
)

// pageSizer sizes the pages of one ReadStream or ReadAll: the first of
// Config.ReadPageSize events, then twice the last while the reader took
// less than readPageQuick over each (statement and loop body together), up
// to readPageGrowth times ReadPageSize; a page that took more than
// readPageSlow halves the next, down to ReadPageSize. A reader that keeps up
// pays fewer round trips and executor start-ups; a slow one keeps each
// statement, and the snapshot it holds, short.
type pageSizer struct {
	base, size, max int
	start           time.Time
}

func newPageSizer(base int) pageSizer {
	return pageSizer{base: base, size: base, max: max(base, min(base*readPageGrowth, ReadPageSizeLimit))}
}

// begin starts a page and returns its size.
func (p *pageSizer) begin() int {
	p.start = time.Now()
	return p.size
}

// end sizes the next page after a full one.
func (p *pageSizer) end() {
	switch took := time.Since(p.start); {
	case took < readPageQuick:
		p.size = min(p.size*2, p.max)
	case took > readPageSlow:
		p.size = max(p.size/2, p.base)
	}
}

// errStopReading ends a read whose consumer stopped iterating.
var errStopReading = errors.New("conduit: reader stopped")

// ReadAll yields the global log after position after (the zero Position:
// from the start), in (transaction id, global position) order, fetching
// Config.ReadPageSize events and more per round trip (see there).
//
// It yields only events below the safe horizon: while any transaction that
// could still commit events before them is open, it stops short of them
// rather than skip them. So a reader that resumes from the last position it
// saw never misses an event that committed late.
//
// On a database restored from a logical dump (before
// conduit.rebase_transaction_ids() has run) it yields a
// *RestoredDatabaseError instead of nothing.
//
// Reads stream: each event is yielded as its row comes off the wire, and no
// page is held in memory. So the loop's body runs while the read holds a
// pool connection (one, whatever the log's size); ReadStreamTx's runs while
// tx is busy reading, hence its rule: finish iterating before using tx.
func (s *Store) ReadAll(ctx context.Context, after Position) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		pages := newPageSizer(s.cfg.ReadPageSize)
		for {
			n, stopped, size := 0, false, pages.begin()
			err := s.queries.EventListAllEach(ctx, dbgen.EventListAllParams{
				AfterTx: after.TransactionID, AfterPosition: after.GlobalPosition, MaxCount: int32(size),
			}, func(r dbgen.ConduitEvent) error {
				n++
				e := eventFromRow(r)
				after = e.Position
				if !yield(e, nil) {
					stopped = true
					return errStopReading
				}
				return nil
			})
			switch {
			case stopped:
				return
			case err != nil:
				yield(Event{}, s.dbError(ctx, err, fmt.Sprintf("read all after %s", after)))
				return
			case n < size:
				return
			}
			pages.end()
		}
	}
}

func eventFromRow(r dbgen.ConduitEvent) Event {
	return Event{
		StreamID:      r.StreamID,
		StreamVersion: r.StreamVersion,
		Position:      Position{TransactionID: r.TransactionID, GlobalPosition: r.GlobalPosition},
		ID:            r.EventID,
		Type:          r.EventType,
		Data:          r.Data,
		Metadata:      r.Metadata,
		RecordedAt:    r.RecordedAt,
	}
}
