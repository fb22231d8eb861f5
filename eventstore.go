package conduit

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit/internal/dbgen"
)

// Defaults for Config fields left zero.
const (
	// MaxEventSizeDefault is the default Config.MaxEventSize: 1 MiB.
	MaxEventSizeDefault = 1 << 20
	// ReadPageSizeDefault is the default Config.ReadPageSize.
	ReadPageSizeDefault = 1000

	maxReadPageSize = 1_000_000

	// NotifyIntervalDefault is the default Config.NotifyInterval.
	NotifyIntervalDefault = 5 * time.Millisecond
)

// Config configures a Store. The zero value (or a nil *Config) means
// defaults.
type Config struct {
	// MaxEventSize is the largest event accepted, in bytes of data plus
	// metadata. Defaults to MaxEventSizeDefault (1 MiB).
	MaxEventSize int

	// ReadPageSize is how many events ReadStream and ReadAll fetch per round
	// trip; memory use is bounded by it. Defaults to ReadPageSizeDefault.
	ReadPageSize int

	// Projections run synchronously inside every append's transaction, in
	// this order, for each appended event. An error from any of them rolls
	// back the append. Defaults to none.
	Projections []Projection

	// DisableNotify stops the NOTIFY that Append sends (coalesced, after
	// commit) to wake projectors in other processes; they then find new
	// events at their next poll. Projectors in this process are woken either
	// way. Defaults to false.
	DisableNotify bool

	// NotifyInterval is the least time between two of those NOTIFYs: the
	// first append after a quiet spell is notified at once, those of a busy
	// spell together, so the notifications cost appends little under load.
	// Defaults to NotifyIntervalDefault.
	NotifyInterval time.Duration

	// Logger receives structured logs. Defaults to slog.Default().
	Logger *slog.Logger
}

func (c *Config) withDefaults() (Config, error) {
	var out Config
	if c != nil {
		out = *c
	}
	if out.MaxEventSize < 0 {
		return out, fmt.Errorf("conduit: Config.MaxEventSize must not be negative, got %d", out.MaxEventSize)
	}
	if out.MaxEventSize == 0 {
		out.MaxEventSize = MaxEventSizeDefault
	}
	if out.ReadPageSize < 0 || out.ReadPageSize > maxReadPageSize {
		return out, fmt.Errorf("conduit: Config.ReadPageSize must be between 0 and %d, got %d", maxReadPageSize, out.ReadPageSize)
	}
	if out.ReadPageSize == 0 {
		out.ReadPageSize = ReadPageSizeDefault
	}
	if out.NotifyInterval < 0 {
		return out, fmt.Errorf("conduit: Config.NotifyInterval must not be negative, got %s", out.NotifyInterval)
	}
	if out.NotifyInterval == 0 {
		out.NotifyInterval = NotifyIntervalDefault
	}
	names := map[string]bool{}
	for i, p := range out.Projections {
		if p == nil {
			return out, fmt.Errorf("conduit: Config.Projections[%d] is nil", i)
		}
		if p.Name() == "" || names[p.Name()] {
			return out, fmt.Errorf("conduit: Config.Projections[%d]: name %q is empty or used twice", i, p.Name())
		}
		names[p.Name()] = true
	}
	out.Projections = append([]Projection(nil), out.Projections...)
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	return out, nil
}

// Store appends and reads events. It is safe for concurrent use.
type Store struct {
	pool     *pgxpool.Pool
	queries  *dbgen.Queries
	cfg      Config
	appended appendSignal // wakes projectors in this process
	progress appendSignal // a projector in this process moved its checkpoint
	notifier commitNotifier
	listener *listener

	// projectors names the Projectors made on this Store (see WaitFor).
	projectors projectionNames
}

// NewStore returns a Store over pool. It does not touch the database; run
// Migrate first. A nil cfg means defaults.
func NewStore(pool *pgxpool.Pool, cfg *Config) (*Store, error) {
	if pool == nil {
		return nil, errors.New("conduit: NewStore: nil pool")
	}
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Store{pool: pool, queries: dbgen.New(pool), cfg: c, appended: newAppendSignal(), progress: newAppendSignal()}
	s.notifier.store = s
	s.listener = newListener(s)
	return s, nil
}

// Close waits for notifications in flight. It does not close the pool.
// Stop projectors (cancel their Run) before.
func (s *Store) Close() {
	s.notifier.wg.Wait()
}

// Notify tells projectors that events were committed: those in this process
// at once, those in other processes by a NOTIFY (coalesced, unless
// Config.DisableNotify). Append calls it after its commit; call it after
// committing a transaction in which you called AppendTx, or use InTx, which
// does. Without it projectors still find the events at their next poll.
func (s *Store) Notify() {
	s.appended.notify(Position{})
	if !s.cfg.DisableNotify {
		s.notifier.poke()
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
// MaxEventsPerAppend). With synchronous projections configured it runs them
// in the same transaction.
//
// Errors: *ValidationError (ErrInvalidEvent) before anything is sent,
// *VersionConflictError (ErrVersionConflict), *DuplicateEventIDError
// (ErrDuplicateEventID), *ProjectionError (ErrProjection), or a database
// error.
func (s *Store) Append(ctx context.Context, streamID string, expected ExpectedVersion, events ...EventData) (AppendResult, error) {
	params, err := s.appendParams(streamID, expected, events)
	if err != nil {
		return AppendResult{}, err
	}
	var res AppendResult
	for attempt := 1; ; attempt++ {
		if len(s.cfg.Projections) == 0 {
			// One statement, one implicit transaction, one round trip.
			res, _, err = s.appendWith(ctx, s.queries, params, expected)
		} else {
			err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
				var stored []Event
				res, stored, err = s.appendWith(ctx, s.queries.WithTx(tx), params, expected)
				if err != nil || res.Duplicate {
					return err
				}
				return applyProjections(ctx, tx, s.cfg.Projections, withData(stored, events))
			})
		}
		// With Any or StreamExists, losing the race for the next version to
		// a concurrent append is no conflict: append after it instead.
		if (expected == Any || expected == StreamExists) && attempt < appendRaceRetries && isStreamVersionRace(err) {
			continue
		}
		break
	}
	if err != nil {
		return AppendResult{}, s.interpretAppendError(ctx, err, streamID, expected)
	}
	if !res.Duplicate {
		s.Notify()
	}
	return res, nil
}

// AppendTx is Append inside the caller's transaction: the events, and the
// rows written by synchronous projections, commit or roll back with it.
//
// Besides Append's errors it may return *TransactionOrderError
// (ErrTransactionOrder) when tx wrote earlier than the transaction that
// wrote the stream's last event; roll back and retry the transaction.
// Version conflicts and validation errors leave tx usable; a duplicate event
// id found only by the database's unique index, a projection error or a
// database error leave it aborted. When a concurrent transaction takes the
// stream's next version first, AppendTx returns *VersionConflictError (the
// transaction is aborted) even for Any and StreamExists, where Append would
// retry by itself: retry the transaction (IsRetryable reports true).
//
// AppendTx cannot know when tx commits, so it wakes no projector: call
// Notify after the commit, or use InTx.
func (s *Store) AppendTx(ctx context.Context, tx pgx.Tx, streamID string, expected ExpectedVersion, events ...EventData) (AppendResult, error) {
	params, err := s.appendParams(streamID, expected, events)
	if err != nil {
		return AppendResult{}, err
	}
	q := s.queries.WithTx(tx)
	res, stored, err := s.appendWith(ctx, q, params, expected)
	if err == nil && !res.Duplicate {
		if err = applyProjections(ctx, tx, s.cfg.Projections, withData(stored, events)); err != nil {
			// The events are written; make sure they never commit. (If the
			// projection's own SQL failed, tx is aborted already.)
			_ = q.TransactionAbort(ctx, err.Error())
		}
	}
	if err != nil {
		return AppendResult{}, s.interpretAppendError(ctx, err, streamID, expected)
	}
	return res, nil
}

// appendParams validates input and builds the query's arrays.
func (s *Store) appendParams(streamID string, expected ExpectedVersion, events []EventData) (appendArgs, error) {
	if err := validateStreamID(streamID); err != nil {
		return appendArgs{}, err
	}
	if !expected.valid() {
		return appendArgs{}, &ValidationError{Field: "expected version", Index: -1, Reason: fmt.Sprintf("%d is not a version", int64(expected))}
	}
	switch {
	case len(events) == 0:
		return appendArgs{}, &ValidationError{Field: "events", Index: -1, Reason: "none given"}
	case len(events) > MaxEventsPerAppend:
		return appendArgs{}, &ValidationError{Field: "events", Index: -1, Err: ErrEventTooLarge,
			Reason: fmt.Sprintf("%d events, limit %d per append", len(events), MaxEventsPerAppend)}
	}
	p := appendArgs{ids: make([]uuid.UUID, len(events))}
	p.EventAppendParams = dbgen.EventAppendParams{
		StreamID: streamID,
		Expected: int64(expected),
		EventIds: make([]string, len(events)),
		Types:    make([]string, len(events)),
		Data:     make([]string, len(events)),
		Metadata: make([]string, len(events)),
	}
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
			e.ID = id // the caller's slice: a retry with the same slice is idempotent
		}
		if seen != nil {
			if j, dup := seen[id]; dup {
				return appendArgs{}, &ValidationError{Field: "event id", Index: i,
					Reason: fmt.Sprintf("%s is also the id of event %d", id, j)}
			}
			seen[id] = i
		}
		p.ids[i] = id
		p.EventIds[i] = id.String()
		p.Types[i] = e.Type
		p.Data[i] = string(e.Data)
		p.Metadata[i] = string(e.Metadata)
	}
	return p, nil
}

// appendArgs is a validated append: the query's arrays and the event ids.
type appendArgs struct {
	dbgen.EventAppendParams
	ids []uuid.UUID
}

// appendWith appends in one statement when nothing stands in the way, and
// only when that statement writes nothing asks conduit.append_to_stream
// why, turning its status into a typed error or an idempotent result. It
// returns the stored events (without data, see withData) only when
// synchronous projections need them.
func (s *Store) appendWith(ctx context.Context, q *dbgen.Queries, a appendArgs, expected ExpectedVersion) (AppendResult, []Event, error) {
	p := a.EventAppendParams
	everyRow := len(s.cfg.Projections) > 0 // synchronous projections need every stored event
	var fast []dbgen.EventAppendFastRow
	if len(a.ids) == 1 {
		row, err := q.EventAppendOne(ctx, dbgen.EventAppendOneParams{
			StreamID: p.StreamID, EventID: p.EventIds[0], EventType: p.Types[0], Data: p.Data[0],
			Metadata: p.Metadata[0], Expected: p.Expected,
		})
		switch {
		case err == nil:
			fast = []dbgen.EventAppendFastRow{dbgen.EventAppendFastRow(row)}
		case !errors.Is(err, pgx.ErrNoRows):
			return AppendResult{}, nil, err
		}
	} else {
		var err error
		fast, err = q.EventAppendFast(ctx, dbgen.EventAppendFastParams{
			EveryRow: everyRow, StreamID: p.StreamID, Types: p.Types, Data: p.Data, Metadata: p.Metadata,
			EventIds: p.EventIds, Expected: p.Expected,
		})
		if err != nil {
			return AppendResult{}, nil, err
		}
		slices.Reverse(fast) // newest first
	}
	if len(fast) > 0 {
		if !everyRow {
			last := fast[len(fast)-1]
			return AppendResult{Version: last.StreamVersion,
				Position: Position{TransactionID: last.TransactionID, GlobalPosition: last.GlobalPosition}}, nil, nil
		}
		return storedEvents(a, fast, false)
	}
	rows, err := q.EventAppend(ctx, p)
	if err != nil {
		return AppendResult{}, nil, err
	}
	if len(rows) == 0 {
		return AppendResult{}, nil, errors.New("conduit: append returned no rows")
	}
	first := rows[0]
	switch first.Status {
	case "ok", "duplicate":
		stored := make([]dbgen.EventAppendFastRow, len(rows))
		for i, r := range rows {
			stored[i] = dbgen.EventAppendFastRow{StreamVersion: r.StreamVersion,
				TransactionID: uint64(r.TransactionID), GlobalPosition: r.GlobalPosition, RecordedAt: r.RecordedAt}
		}
		return storedEvents(a, stored, first.Status == "duplicate")
	case "version_conflict":
		return AppendResult{}, nil, &VersionConflictError{StreamID: p.StreamID, Expected: expected, Actual: first.StreamVersion}
	case "event_id_conflict":
		return AppendResult{}, nil, &DuplicateEventIDError{EventID: a.ids[0], StreamID: first.ConflictStream, Version: first.StreamVersion}
	case "transaction_order":
		return AppendResult{}, nil, &TransactionOrderError{StreamID: p.StreamID, Version: first.StreamVersion}
	}
	return AppendResult{}, nil, fmt.Errorf("conduit: append returned unknown status %q", first.Status)
}

// storedEvents builds the result and the stored events from one row per
// event; duplicate marks an idempotent retry.
func storedEvents(a appendArgs, rows []dbgen.EventAppendFastRow, duplicate bool) (AppendResult, []Event, error) {
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

// appendRaceRetries bounds Append's retries when an Any or StreamExists
// append loses the race for a version to concurrent appends.
const appendRaceRetries = 10

// isStreamVersionRace reports the unique violation of a concurrent append
// taking the same stream version between our check and our insert.
func isStreamVersionRace(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "events_stream_version_key"
}

// interpretAppendError maps database errors to the library's typed errors.
func (s *Store) interpretAppendError(ctx context.Context, err error, streamID string, expected ExpectedVersion) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		if errors.Is(err, ErrVersionConflict) || errors.Is(err, ErrDuplicateEventID) ||
			errors.Is(err, ErrTransactionOrder) || errors.Is(err, ErrProjection) {
			return err
		}
		return fmt.Errorf("conduit: append to stream %q: %w", streamID, err)
	}
	switch pgErr.ConstraintName {
	case "events_stream_version_key":
		// A concurrent append won the race between our version check and
		// our insert. It has committed (or we would not have failed), so
		// the pool sees the version that beat us.
		actual, verr := s.StreamVersion(ctx, streamID)
		if verr != nil {
			actual = -1
		}
		return &VersionConflictError{StreamID: streamID, Expected: expected, Actual: actual}
	case "events_event_id_key":
		dup := &DuplicateEventIDError{EventID: eventIDFromDetail(pgErr.Detail)}
		if at, err := s.queries.EventLocate(ctx, dup.EventID); err == nil {
			dup.StreamID, dup.Version = at.StreamID, at.StreamVersion
		}
		return dup
	}
	return fmt.Errorf("conduit: append to stream %q: %w", streamID, err)
}

// eventIDFromDetail extracts the id from "Key (event_id)=(…) already exists.".
func eventIDFromDetail(detail string) uuid.UUID {
	const prefix = "Key (event_id)=("
	if len(detail) >= len(prefix)+36 && detail[:len(prefix)] == prefix {
		if id, err := uuid.Parse(detail[len(prefix) : len(prefix)+36]); err == nil {
			return id
		}
	}
	return uuid.Nil
}

// StreamVersion returns the stream's current version: 0 if it has no events.
func (s *Store) StreamVersion(ctx context.Context, streamID string) (int64, error) {
	if err := validateStreamID(streamID); err != nil {
		return 0, err
	}
	v, err := s.queries.StreamVersionGet(ctx, streamID)
	if err != nil {
		return 0, fmt.Errorf("conduit: version of stream %q: %w", streamID, err)
	}
	return v, nil
}

// ReadStream yields the stream's events from fromVersion (1: the start) in
// version order, fetching Config.ReadPageSize events per round trip. A
// stream with no events yields nothing. The first error ends the sequence.
func (s *Store) ReadStream(ctx context.Context, streamID string, fromVersion int64) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		if err := validateStreamID(streamID); err != nil {
			yield(Event{}, err)
			return
		}
		from := max(fromVersion, 1)
		for {
			rows, err := s.queries.EventListByStream(ctx, dbgen.EventListByStreamParams{
				StreamID: streamID, FromVersion: from, MaxCount: int32(s.cfg.ReadPageSize),
			})
			if err != nil {
				yield(Event{}, fmt.Errorf("conduit: read stream %q: %w", streamID, err))
				return
			}
			for _, r := range rows {
				if !yield(eventFromRow(dbgen.ConduitEvent(r)), nil) {
					return
				}
			}
			if len(rows) < s.cfg.ReadPageSize {
				return
			}
			from = rows[len(rows)-1].StreamVersion + 1
		}
	}
}

// ReadAll yields the global log after position after (the zero Position:
// from the start), in (transaction id, global position) order, fetching
// Config.ReadPageSize events per round trip.
//
// It yields only events below the safe horizon: while any transaction that
// could still commit events before them is open, it stops short of them
// rather than skip them. So a reader that resumes from the last position it
// saw never misses an event that committed late.
func (s *Store) ReadAll(ctx context.Context, after Position) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		for {
			rows, err := s.readAllPage(ctx, s.queries, after, s.cfg.ReadPageSize)
			if err != nil {
				yield(Event{}, err)
				return
			}
			for _, r := range rows {
				e := eventFromRow(r)
				if !yield(e, nil) {
					return
				}
				after = e.Position
			}
			if len(rows) < s.cfg.ReadPageSize {
				return
			}
		}
	}
}

func (s *Store) readAllPage(ctx context.Context, q *dbgen.Queries, after Position, limit int) ([]dbgen.ConduitEvent, error) {
	rows, err := q.EventListAll(ctx, dbgen.EventListAllParams{
		AfterTx: after.TransactionID, AfterPosition: after.GlobalPosition, MaxCount: int32(limit),
	})
	if err != nil {
		return nil, fmt.Errorf("conduit: read all after %s: %w", after, err)
	}
	return rows, nil
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
