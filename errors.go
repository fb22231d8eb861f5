package conduit

import (
	"errors"
	"fmt"

	"github.com/google/uuid"
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
	// log's order disagree with the stream's. Roll back and retry the whole
	// transaction; IsRetryable reports true. Only AppendTx can return it.
	ErrTransactionOrder = errors.New("conduit: transaction older than the stream's last event")

	// ErrInvalidEvent: the input was refused before anything was written.
	// The error is a *ValidationError naming the field.
	ErrInvalidEvent = errors.New("conduit: invalid event")

	// ErrEventTooLarge: an event's data and metadata exceed
	// Config.MaxEventSize. It also matches ErrInvalidEvent.
	ErrEventTooLarge = errors.New("conduit: event too large")

	// ErrProjection: a synchronous projection failed and the append was
	// rolled back. The error is a *ProjectionError.
	ErrProjection = errors.New("conduit: projection failed")

	// ErrNotFound: the thing asked for does not exist.
	ErrNotFound = errors.New("conduit: not found")
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
// equal to the global log's order (see ErrTransactionOrder).
type TransactionOrderError struct {
	StreamID string
	// Version is the stream's last version, written by a younger transaction.
	Version int64
}

func (e *TransactionOrderError) Error() string {
	return fmt.Sprintf("conduit: append to stream %q refused: its version %d was written by a younger transaction; retry the transaction", e.StreamID, e.Version)
}

// Is makes errors.Is(err, ErrTransactionOrder) true.
func (e *TransactionOrderError) Is(target error) bool { return target == ErrTransactionOrder }

// IsRetryable reports whether retrying the whole operation (for AppendTx, the
// caller's whole transaction) may succeed: version conflicts (after
// re-reading the stream) and transaction-order refusals.
func IsRetryable(err error) bool {
	return errors.Is(err, ErrVersionConflict) || errors.Is(err, ErrTransactionOrder)
}

// ValidationError reports input refused before anything was written.
type ValidationError struct {
	// Field names what was wrong: "stream id", "type", "data", "metadata",
	// "event id", "events", "expected version".
	Field string
	// Index is the event's index in the append call, or -1.
	Index  int
	Reason string
	// Err is ErrEventTooLarge for size limits, else nil.
	Err error
}

func (e *ValidationError) Error() string {
	if e.Index >= 0 {
		return fmt.Sprintf("conduit: invalid event %d: %s: %s", e.Index, e.Field, e.Reason)
	}
	return fmt.Sprintf("conduit: invalid input: %s: %s", e.Field, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidEvent) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidEvent }

// Unwrap returns ErrEventTooLarge for size limits.
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
