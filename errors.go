package conduit

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/conduit-es/conduit/internal/dberr"
)

// Sentinel errors. Every typed error below matches one of these with
// errors.Is, so callers can branch without type assertions.
var (
	// ErrVersionConflict: the stream was not at the expected version.
	// The error is a *VersionConflictError carrying the actual version.
	ErrVersionConflict = errors.New("conduit: version conflict")

	// ErrDuplicateEventID: an event id is already stored at another place
	// (another stream or version). The error is a *DuplicateEventIDError.
	// Re-appending the same ids at the same place is not an error: it is
	// an idempotent retry and writes nothing.
	ErrDuplicateEventID = errors.New("conduit: event id already used")

	// ErrTransactionOrder: the append ran in a transaction whose id is older
	// than that of the stream's last event, which would make the global
	// log's order disagree with the stream's; or the enqueue ran in a
	// transaction whose id is older than that of a message of the same key
	// that committed first, which would make the relay deliver the key's
	// messages out of the order of their commits. Roll back and retry the
	// whole transaction; IsRetryable reports true. Only AppendTx and
	// EnqueueTx can return it, and only in a transaction that wrote before.
	ErrTransactionOrder = errors.New("conduit: transaction older than the stream's last event or the key's last message")

	// ErrInvalidEvent: the input was refused before anything was written.
	// The error is a *ValidationError naming the field.
	ErrInvalidEvent = errors.New("conduit: invalid event")

	// ErrEventTooLarge: an event's data and metadata exceed
	// Config.MaxEventSize. It also matches ErrInvalidEvent.
	ErrEventTooLarge = errors.New("conduit: event too large")

	// ErrAppendTooLarge: an append has more than MaxEventsPerAppend events,
	// or more than Config.MaxAppendSize bytes of data and metadata in all.
	// It also matches ErrInvalidEvent.
	ErrAppendTooLarge = errors.New("conduit: append too large")

	// ErrRestoredDatabase: the database's transaction ids are below those
	// stored in the event log, as after a restore from a logical dump into
	// another cluster. Readers of the global log would see nothing new and
	// appends could break a stream's order, so appends to existing streams,
	// ReadAll and projectors refuse. The error is a *RestoredDatabaseError
	// naming the fix: SELECT conduit.rebase_transaction_ids();
	ErrRestoredDatabase = errors.New("conduit: transaction ids went backwards (database restored from a logical dump?)")

	// ErrInvalidConfig: a Config or ProjectorConfig field is out of its
	// documented range. The error is a *ConfigError naming the field.
	ErrInvalidConfig = errors.New("conduit: invalid configuration")

	// ErrProjection: a synchronous projection failed and the append was
	// rolled back. The error is a *ProjectionError.
	ErrProjection = errors.New("conduit: projection failed")

	// ErrNotFound: the thing asked for does not exist.
	ErrNotFound = errors.New("conduit: not found")

	// ErrCannotRebuildOnline: Store.RebuildProjectionOnline (or the swap
	// that ends it) refused a read table that an online rebuild cannot
	// replace soundly: one the role does not own, a view or foreign key
	// depending on it, a trigger, foreign key or policy of its own, and the
	// like; the error names the table and the reason. Nothing was done.
	// Use Store.RebuildProjection for such tables.
	ErrCannotRebuildOnline = errors.New("conduit: cannot rebuild online")

	// ErrPoolerMisconfigured: a statement failed because the pool's query
	// mode keeps prepared statements on the server between round trips
	// (pgx's default, QueryExecModeCacheStatement, prepares each by name;
	// QueryExecModeDescribeExec describes it in one round trip and runs it
	// in the next) behind a pooler in transaction mode, such as PgBouncer,
	// which runs each transaction on whichever server connection is free:
	// the statement was missing there, or one of its name was there already
	// (SQLSTATE 26000 or 42P05). The statement did not run: an Append that
	// fails so wrote nothing. It fails now and then, not every time; the fix
	// is the pool's configuration: connect with default_query_exec_mode=exec
	// (or cache_describe), see "Behind PgBouncer" in the package doc. The
	// error wraps the server's.
	ErrPoolerMisconfigured = errors.New("conduit: the pool's query mode does not suit a pooler in transaction mode")

	// ErrNeedsDirectConnection: Migrate (or MigrateTo) found a pooler
	// between it and PostgreSQL, and refused before taking its session
	// advisory lock or changing anything. Behind PgBouncer in transaction
	// mode that lock would stay with an idle server connection and block
	// every later Migrate. Connect Migrate to the server itself (the pooler
	// can keep serving the Store), or apply Migrations() with a tool of your
	// own.
	ErrNeedsDirectConnection = errors.New("conduit: Migrate needs a direct connection (not PgBouncer in transaction mode)")
)

// VersionConflictError reports an append whose expected version did not hold.
type VersionConflictError struct {
	StreamID string
	Expected ExpectedVersion
	// Actual is the stream's version when the append was refused (0: no stream).
	Actual int64
}

func (e *VersionConflictError) Error() string {
	return fmt.Sprintf("conduit: version conflict on stream %q: expected %s, actual %d", e.StreamID, e.Expected, e.Actual)
}

// Is makes errors.Is(err, ErrVersionConflict) true.
func (e *VersionConflictError) Is(target error) bool { return target == ErrVersionConflict }

// DuplicateEventIDError reports an event id that is stored at another place.
type DuplicateEventIDError struct {
	EventID uuid.UUID
	// StreamID and Version say where the id is stored, when known.
	StreamID string
	Version  int64
}

func (e *DuplicateEventIDError) Error() string {
	if e.StreamID == "" {
		return fmt.Sprintf("conduit: event id %s already used", e.EventID)
	}
	return fmt.Sprintf("conduit: event id %s already used by stream %q at version %d", e.EventID, e.StreamID, e.Version)
}

// Is makes errors.Is(err, ErrDuplicateEventID) true.
func (e *DuplicateEventIDError) Is(target error) bool { return target == ErrDuplicateEventID }

// TransactionOrderError reports an append refused to keep the stream's order
// equal to the global log's order, or an enqueue refused to keep a key's
// order of messages equal to the order of their commits (see
// ErrTransactionOrder).
type TransactionOrderError struct {
	// StreamID is the stream of a refused append ("" for an enqueue).
	StreamID string
	// Version is the stream's last version, written by a younger transaction.
	Version int64
	// Key is the message key of a refused enqueue ("" for an append): a
	// younger transaction enqueued to it, and committed, after this
	// transaction had its id.
	Key string
}

func (e *TransactionOrderError) Error() string {
	if e.StreamID == "" {
		return fmt.Sprintf("conduit: enqueue to key %q refused: a younger transaction enqueued to it and committed since this transaction first wrote; retry the transaction", e.Key)
	}
	return fmt.Sprintf("conduit: append to stream %q refused: its version %d was written by a younger transaction; retry the transaction", e.StreamID, e.Version)
}

// Is makes errors.Is(err, ErrTransactionOrder) true.
func (e *TransactionOrderError) Is(target error) bool { return target == ErrTransactionOrder }

// IsRefused reports an append the store refused, having written nothing:
// a version conflict, a transaction-order refusal (AppendTx), invalid input
// or an event id used elsewhere. Resending the same events gets the same
// answer: reload the stream and decide again, or fix the input.
func IsRefused(err error) bool {
	return errors.Is(err, ErrVersionConflict) || errors.Is(err, ErrTransactionOrder) ||
		errors.Is(err, ErrInvalidEvent) || errors.Is(err, ErrDuplicateEventID)
}

// IsOutcomeUnknown reports a failure that says nothing about the events:
// the connection was lost (perhaps around the commit), the server shut down
// or restarted, the transaction hit a serialization failure or a deadlock,
// or ctx ended. The events may or may not be stored: resend the same events
// (for AppendTx, retry the whole transaction). Their ids make that safe: if
// they were stored, the resend is an idempotent retry.
func IsOutcomeUnknown(err error) bool {
	return dberr.IsTransient(err)
}

// IsRetryable reports whether retrying may succeed: IsOutcomeUnknown
// (resend the same events), or a version conflict or transaction-order
// refusal (reload, decide again, append the new decision).
func IsRetryable(err error) bool {
	return errors.Is(err, ErrVersionConflict) || errors.Is(err, ErrTransactionOrder) || IsOutcomeUnknown(err)
}

// RestoredDatabaseError reports ErrRestoredDatabase with the figures.
type RestoredDatabaseError struct {
	MaxStored, NextTransactionID int64
}

func (e *RestoredDatabaseError) Error() string {
	return fmt.Sprintf("conduit: stored transaction id %d is above the server's next one (%d): the database was "+
		"restored from a logical dump into another cluster; run SELECT conduit.rebase_transaction_ids(); "+
		"(projections not caught up at dump time are rebuilt)", e.MaxStored, e.NextTransactionID)
}

// Is makes errors.Is(err, ErrRestoredDatabase) true.
func (e *RestoredDatabaseError) Is(target error) bool { return target == ErrRestoredDatabase }

// ConfigError reports a configuration field out of its range.
type ConfigError struct {
	// Field is the field's name, such as "ProjectorConfig.BatchSize".
	Field  string
	Reason string
}

func (e *ConfigError) Error() string { return "conduit: " + e.Field + ": " + e.Reason }

// Is makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// ValidationError reports input refused before anything was written.
type ValidationError struct {
	// Field names what was wrong: "stream id", "type", "data", "metadata",
	// "event id", "events", "expected version", "outbox message" (a
	// Config.Outbox rule's message for the event); for Enqueue and
	// EnqueueTx "messages", "message id", "message topic", "message key",
	// "message payload", "message headers".
	Field string
	// Index is the event's (or message's) index in the call, or -1.
	Index  int
	Reason string
	// Err is ErrEventTooLarge or ErrAppendTooLarge for size limits, else
	// nil.
	Err error
}

func (e *ValidationError) Error() string {
	if e.Index >= 0 && strings.HasPrefix(e.Field, "message ") {
		return fmt.Sprintf("conduit: invalid message %d: %s: %s", e.Index, e.Field, e.Reason)
	}
	if e.Index >= 0 {
		return fmt.Sprintf("conduit: invalid event %d: %s: %s", e.Index, e.Field, e.Reason)
	}
	return fmt.Sprintf("conduit: invalid input: %s: %s", e.Field, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidEvent) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidEvent }

// Unwrap returns ErrEventTooLarge or ErrAppendTooLarge for size limits.
func (e *ValidationError) Unwrap() error { return e.Err }

// ProjectionError reports a projection that failed on an event.
type ProjectionError struct {
	Projection string
	Event      Event
	Err        error
}

func (e *ProjectionError) Error() string {
	return fmt.Sprintf("conduit: projection %q failed on event %s (%s, stream %q v%d): %v",
		e.Projection, e.Event.ID, e.Event.Type, e.Event.StreamID, e.Event.StreamVersion, e.Err)
}

// Is makes errors.Is(err, ErrProjection) true.
func (e *ProjectionError) Is(target error) bool { return target == ErrProjection }

// Unwrap returns the projection's own error.
func (e *ProjectionError) Unwrap() error { return e.Err }

// appendError maps an append's database error to the library's typed errors.
func (s *Store) appendError(ctx context.Context, err error, a appendArgs) error {
	switch dberr.Classify(err) {
	case dberr.EventIDTaken:
		// A reused id the fast statement's own check does not cover. The
		// failed statement may have aborted the caller's transaction, so
		// look it up through the pool; an id reused within that
		// transaction is invisible there, and reported without a place.
		dup := &DuplicateEventIDError{}
		if at, lerr := s.queries.EventLocateAny(ctx, a.ids); lerr == nil {
			dup.EventID, dup.StreamID, dup.Version = at.EventID, at.StreamID, at.StreamVersion
		} else if len(a.ids) == 1 {
			dup.EventID = a.ids[0]
		}
		return dup
	case dberr.StreamVersionTaken:
		// Append retries this itself; only a writer that bypasses the
		// stream lock can get here.
		actual, verr := s.StreamVersion(ctx, a.StreamID)
		if verr != nil {
			return s.dbError(ctx, err, fmt.Sprintf("append to stream %q", a.StreamID))
		}
		return &VersionConflictError{StreamID: a.StreamID, Expected: a.expected, Actual: actual}
	}
	return s.dbError(ctx, err, fmt.Sprintf("append to stream %q", a.StreamID))
}

// dbError maps a database error met while doing what to the library's
// typed errors, or wraps it. Errors the library made pass through.
func (s *Store) dbError(ctx context.Context, err error, what string) error {
	var (
		vc *VersionConflictError
		de *DuplicateEventIDError
		to *TransactionOrderError
		pe *ProjectionError
		rd *RestoredDatabaseError
	)
	if errors.As(err, &vc) || errors.As(err, &de) || errors.As(err, &to) || errors.As(err, &pe) || errors.As(err, &rd) {
		return err
	}
	switch dberr.Classify(err) {
	case dberr.RestoredDatabase:
		return s.restoredDatabase(ctx)
	case dberr.NoProjection:
		return fmt.Errorf("conduit: %s: %w", what, ErrNotFound)
	case dberr.OnlineRebuildRefused:
		return fmt.Errorf("%w: %w", ErrCannotRebuildOnline, err)
	}
	return fmt.Errorf("conduit: %s: %w", what, poolerHint(err))
}

// poolerHint returns err as ErrPoolerMisconfigured naming the fix if it is
// a prepared statement that a pooler lost (dberr.PreparedStatementMismatch),
// else err.
func poolerHint(err error) error {
	if dberr.Classify(err) != dberr.PreparedStatementMismatch || errors.Is(err, ErrPoolerMisconfigured) {
		return err
	}
	return fmt.Errorf("%w (%w): connect with default_query_exec_mode=exec (or cache_describe)", ErrPoolerMisconfigured, err)
}

// databaseFault reports a projection's error that is the database's or the
// pool's fault, not the event's: transient, or a prepared statement a pooler
// lost. The projector retries those with backoff and never counts them
// against the event.
func databaseFault(err error) bool {
	k := dberr.Classify(err)
	return k == dberr.Transient || k == dberr.PreparedStatementMismatch
}

// restoredDatabase returns the *RestoredDatabaseError with the figures.
func (s *Store) restoredDatabase(ctx context.Context) error {
	r, err := s.queries.TransactionIDsCheck(ctx)
	if err != nil {
		return &RestoredDatabaseError{MaxStored: -1, NextTransactionID: -1}
	}
	return &RestoredDatabaseError{MaxStored: r.MaxStored, NextTransactionID: r.NextXid}
}
