package conduit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/conduit-es/conduit/internal/dberr"
	"github.com/conduit-es/conduit/internal/dbgen"
)

// ProjectionState is a projection's state as reported by status.
type ProjectionState string

const (
	// StateRunning: an instance holds the lease and is working through a
	// backlog, or on a batch that takes a while (its lease keeper says so
	// within a third of the lease).
	StateRunning ProjectionState = "running"
	// StateCaughtUp: an instance holds the lease and has read up to the
	// safe horizon.
	StateCaughtUp ProjectionState = "caught_up"
	// StateStalled: stopped at a poison event (see StallReason).
	StateStalled ProjectionState = "stalled"
	// StateStopped: no instance holds a live lease.
	StateStopped ProjectionState = "stopped"
	// StateRebuilding: replaying after a rebuild, not caught up yet.
	StateRebuilding ProjectionState = "rebuilding"
	// StatePaused: paused by Store.PauseProjection (or SQL
	// conduit.pause_projection) until resumed; whatever else it is doing
	// waits.
	StatePaused ProjectionState = "paused"
)

// ProjectionStatus is one projection's status, as conduit.projection_status()
// reports it in SQL.
type ProjectionStatus struct {
	Name  string
	State ProjectionState
	// Checkpoint is the last event the projection has passed.
	Checkpoint Position
	// LagEvents counts events after the checkpoint, exactly up to 10,000;
	// further behind, LagEstimated is set and LagEvents is estimated from
	// global positions (a little high after rolled-back appends), so that
	// status costs milliseconds at any lag. Lag is the age of the oldest of
	// the first 10,001 events after the checkpoint (0 when none).
	LagEvents    int64
	LagEstimated bool
	Lag          time.Duration
	// LastProgress is when a batch last applied events (zero: never).
	LastProgress time.Time
	// StallReason and StalledEventID describe a poison event (StateStalled).
	StallReason    string
	StalledEventID uuid.UUID
	// FailingEventID is the event the projection failed on last and has
	// not passed since (uuid.Nil: none), FailedAttempts how many times it
	// failed, counted by every instance that held the lease, and LastError
	// its latest error. The poison policy applies once FailedAttempts
	// reaches ProjectorConfig.MaxAttempts.
	FailingEventID uuid.UUID
	FailedAttempts int
	LastError      string
	// Parked counts parked events waiting for a decision.
	Parked int64
	// Owner is the instance holding the lease, Epoch its fencing token.
	Owner        string
	Epoch        int64
	LeaseExpires time.Time
	// EventsApplied counts events applied since the last rebuild.
	EventsApplied  int64
	RebuildStarted time.Time
	// PausedAt is when the projection was paused (zero: it is not).
	PausedAt time.Time
	// Horizon is set when a running transaction holds back events this
	// projection could otherwise read.
	Horizon *HorizonHolder
	// OnlineRebuild is set while an online rebuild runs (see
	// Store.RebuildProjectionOnline).
	OnlineRebuild *OnlineRebuild
}

// HorizonHolder is the transaction holding back the safe horizon: until it
// ends, no reader of the global log passes the events written after it
// began writing. A long-running write transaction anywhere in the cluster
// delays every projector (it never loses events).
type HorizonHolder struct {
	// HeldEvents counts the projection's pending events it holds back, up
	// to 10,001.
	HeldEvents  int64
	PID         int32
	Since       time.Time
	Application string
	Query       string
}

// ProjectionStatuses returns the status of every projection that has run.
func (s *Store) ProjectionStatuses(ctx context.Context) ([]ProjectionStatus, error) {
	return s.projectionStatuses(ctx, pgtype.Text{})
}

// ProjectionStatus returns one projection's status, or ErrNotFound if it
// has never run.
func (s *Store) ProjectionStatus(ctx context.Context, name string) (ProjectionStatus, error) {
	st, err := s.projectionStatuses(ctx, pgtype.Text{String: name, Valid: true})
	if err != nil {
		return ProjectionStatus{}, err
	}
	if len(st) == 0 {
		return ProjectionStatus{}, fmt.Errorf("conduit: projection %q: %w", name, ErrNotFound)
	}
	return st[0], nil
}

func (s *Store) projectionStatuses(ctx context.Context, name pgtype.Text) ([]ProjectionStatus, error) {
	if name.Valid && checkName("projection", name.String) != nil {
		return nil, nil // no projection has such a name
	}
	rows, err := s.queries.ProjectionStatusList(ctx, name)
	if err != nil {
		return nil, s.dbError(ctx, err, "projection status")
	}
	out := make([]ProjectionStatus, len(rows))
	for i, r := range rows {
		out[i] = ProjectionStatus{
			Name:           r.Name,
			State:          ProjectionState(r.State),
			Checkpoint:     Position{TransactionID: uint64(r.CheckpointTx), GlobalPosition: r.CheckpointPosition},
			LagEvents:      r.LagEvents,
			LagEstimated:   r.LagEstimated,
			Lag:            time.Duration(r.LagSeconds * float64(time.Second)),
			LastProgress:   zeroTime(r.LastProgressAt),
			StallReason:    r.StallReason,
			StalledEventID: r.StalledEventID,
			FailingEventID: r.FailingEventID,
			FailedAttempts: int(r.FailedAttempts),
			LastError:      r.LastError,
			Parked:         r.ParkedCount,
			Owner:          r.Owner,
			Epoch:          r.Epoch,
			LeaseExpires:   zeroTime(r.LeaseExpiresAt),
			EventsApplied:  r.EventsApplied,
			RebuildStarted: zeroTime(r.RebuildStartedAt),
			PausedAt:       zeroTime(r.PausedAt),
		}
		if !zeroTime(r.OnlineRebuildStartedAt).IsZero() {
			left := time.Duration(-1)
			if r.OnlineRebuildSecondsLeft >= 0 {
				left = time.Duration(r.OnlineRebuildSecondsLeft * float64(time.Second))
			}
			out[i].OnlineRebuild = &OnlineRebuild{Started: r.OnlineRebuildStartedAt, Replayed: r.OnlineRebuildReplayed,
				EventsPerSecond: r.OnlineRebuildEventsPerSecond, Left: left, Error: r.OnlineRebuildError}
		}
		if r.HorizonPid != 0 {
			out[i].Horizon = &HorizonHolder{HeldEvents: r.HorizonHeldEvents, PID: r.HorizonPid,
				Since: zeroTime(r.HorizonSince), Application: r.HorizonApplication, Query: r.HorizonQuery}
		}
	}
	return out, nil
}

// zeroTime maps the queries' stand-in for NULL (year 1) to time.Time{}.
func zeroTime(t time.Time) time.Time {
	if t.Year() <= 1 {
		return time.Time{}
	}
	return t
}

// WaitFor returns once the projection has committed past position pos (as
// returned by Append), so a read of its tables sees the append: read your
// own writes. It returns ctx's error if ctx ends first; transient database
// errors (a dropped connection, a restart) are retried until then.
//
// It does not wait for what cannot come. A projection stalled on a poison
// event short of pos (see PoisonStop) returns a *ProjectionStalledError
// (ErrProjectionStalled) with the event and the reason; a projection that
// has never run, and for which no Projector was made on this Store, returns
// ErrNotFound at once. A Projector made on this Store (even one whose Run
// has not started yet) makes its name known, so WaitFor waits for its first
// run. A paused projection (see PauseProjection) short of pos returns a
// *ProjectionPausedError at once.
func (s *Store) WaitFor(ctx context.Context, projection string, pos Position) error {
	wait := time.Millisecond
	for {
		progressed := s.progress.Wait()
		passed, err := s.projectionPassed(ctx, projection, pos)
		switch {
		case passed:
			return nil
		case errors.Is(err, errNotRegistered):
			if !s.projectors.has(projection) {
				return fmt.Errorf("conduit: wait for %q: no projection of that name has run, "+
					"and no Projector for it was made on this Store: %w", projection, ErrNotFound)
			}
			// Made here, not registered yet: its first run registers it.
		case errors.Is(err, ErrProjectionStalled), errors.Is(err, ErrProjectionPaused):
			return err
		case err != nil && ctx.Err() != nil:
			return fmt.Errorf("conduit: wait for %q to pass %s: %w", projection, pos, ctx.Err())
		case err != nil && !dberr.IsTransient(err):
			return s.dbError(ctx, err, fmt.Sprintf("wait for %q", projection))
		case err != nil:
			// A dropped connection or a restarting server: the pool
			// reconnects; keep waiting until ctx ends.
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("conduit: wait for %q to pass %s: %w", projection, pos, ctx.Err())
		case <-progressed:
			t.Stop()
		case <-t.C:
			wait = min(wait*2, waitPollMax)
		}
	}
}

// waitPollMax is the longest WaitFor goes without reading the checkpoint
// again; a projector in this process wakes it sooner.
const waitPollMax = 50 * time.Millisecond

// errNotRegistered: the projection has no row in conduit.projections (no
// Projector for it has ever run on this database).
var errNotRegistered = errors.New("conduit: projection not registered")

// projectionPassed reports whether the projection's checkpoint has passed
// pos, in one round trip. Short of pos, it returns a
// *ProjectionStalledError if a poison event holds the projection, and
// errNotRegistered if the projection has no row.
func (s *Store) projectionPassed(ctx context.Context, projection string, pos Position) (bool, error) {
	if checkName("projection", projection) != nil {
		return false, errNotRegistered // NewProjector refuses such a name
	}
	r, err := s.queries.ProjectionCheckpointGet(ctx, projection)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, errNotRegistered
	}
	if err != nil {
		return false, err
	}
	if !(Position{TransactionID: r.CheckpointTx, GlobalPosition: r.CheckpointPosition}).Before(pos) {
		return true, nil
	}
	if r.Paused {
		return false, &ProjectionPausedError{Projection: projection}
	}
	if ProjectionState(r.State) == StateStalled {
		return false, &ProjectionStalledError{Projection: projection, EventID: r.StalledEventID, Reason: r.StallReason}
	}
	return false, nil
}

// ErrProjectionPaused: the projection is paused (Store.PauseProjection, or
// SQL conduit.pause_projection) short of the position waited for. The
// error is a *ProjectionPausedError. Resume it with Store.ResumeProjection.
var ErrProjectionPaused = errors.New("conduit: projection paused")

// ProjectionPausedError reports a paused projection (ErrProjectionPaused).
type ProjectionPausedError struct {
	Projection string
}

func (e *ProjectionPausedError) Error() string {
	return fmt.Sprintf("conduit: projection %q is paused; resume it with ResumeProjection "+
		"(SELECT conduit.resume_projection('%s');)", e.Projection, e.Projection)
}

// Is makes errors.Is(err, ErrProjectionPaused) true.
func (e *ProjectionPausedError) Is(target error) bool { return target == ErrProjectionPaused }

// PauseProjection pauses the projection, by calling the SQL function
// conduit.pause_projection (which you can also call from psql): it waits
// for a batch in flight, and once it returns no instance applies anything
// until ResumeProjection, though instances keep running and keep their
// lease. Status says paused; WaitFor and CatchUp short of their position
// return a *ProjectionPausedError at once. Pausing a paused projection
// changes nothing. ErrNotFound if the projection never ran.
func (s *Store) PauseProjection(ctx context.Context, name string) error {
	if checkName("projection", name) != nil {
		return fmt.Errorf("conduit: pause %q: %w", name, ErrNotFound)
	}
	if err := s.queries.ProjectionPause(ctx, name); err != nil {
		return s.dbError(ctx, err, fmt.Sprintf("pause %q", name))
	}
	return nil
}

// ResumeProjection resumes a paused projection (SQL:
// conduit.resume_projection, which also wakes projectors in other
// processes) and wakes this Store's projectors. Resuming a projection that
// is not paused changes nothing. ErrNotFound if the projection never ran.
func (s *Store) ResumeProjection(ctx context.Context, name string) error {
	if checkName("projection", name) != nil {
		return fmt.Errorf("conduit: resume %q: %w", name, ErrNotFound)
	}
	if err := s.queries.ProjectionResume(ctx, name); err != nil {
		return s.dbError(ctx, err, fmt.Sprintf("resume %q", name))
	}
	s.appended.Notify()
	return nil
}

// ErrProjectionStalled: the projection stopped at a poison event under
// PoisonStop, short of the position waited for. The error is a
// *ProjectionStalledError. The projector retries the event every
// ProjectorConfig.StalledRetryInterval: a fixed projection goes on by
// itself; a rebuild or a skipped fix is the other way out.
var ErrProjectionStalled = errors.New("conduit: projection stalled")

// ProjectionStalledError reports a projection stalled at a poison event, as
// its status does (StateStalled, StallReason, StalledEventID).
type ProjectionStalledError struct {
	Projection string
	// EventID is the poison event's id.
	EventID uuid.UUID
	// Reason is the projection's error on it, with the event's type,
	// stream and version.
	Reason string
}

func (e *ProjectionStalledError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("conduit: projection %q is stalled at event %s", e.Projection, e.EventID)
	}
	return fmt.Sprintf("conduit: projection %q is stalled: %s", e.Projection, e.Reason)
}

// Is makes errors.Is(err, ErrProjectionStalled) true.
func (e *ProjectionStalledError) Is(target error) bool { return target == ErrProjectionStalled }

// projectionNames is a set of projection names, safe for concurrent use. The
// zero value is empty.
type projectionNames struct {
	mu    sync.Mutex
	names map[string]struct{}
}

func (n *projectionNames) add(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.names == nil {
		n.names = map[string]struct{}{}
	}
	n.names[name] = struct{}{}
}

func (n *projectionNames) has(name string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.names[name]
	return ok
}

// Head returns the Position of the last event committed so far, in the
// global log's (transaction id, global position) order: the zero Position
// for an empty log. WaitFor(ctx, name, head) then returns once the
// projection has applied every event committed before the call (and any
// that older transactions, still open then, commit meanwhile: they sort
// before head). One query on the log's primary key.
func (s *Store) Head(ctx context.Context) (Position, error) {
	r, err := s.queries.LogHeadGet(ctx)
	if errors.Is(err, pgx.ErrNoRows) {
		return Position{}, nil
	}
	if err != nil {
		return Position{}, s.dbError(ctx, err, "head of the log")
	}
	return Position{TransactionID: r.TransactionID, GlobalPosition: r.GlobalPosition}, nil
}

// RebuildProjection truncates the projection's read tables and resets its
// checkpoint in one transaction, by calling the SQL function
// conduit.rebuild_projection (which you can also call from psql). The
// running instance then replays the log from the start; its status says
// rebuilding until it has caught up. It waits for a batch in flight and
// never interleaves with one. ErrNotFound if the projection never ran.
func (s *Store) RebuildProjection(ctx context.Context, name string) error {
	if checkName("projection", name) != nil {
		return fmt.Errorf("conduit: rebuild %q: %w", name, ErrNotFound)
	}
	if err := s.queries.ProjectionRebuild(ctx, name); err != nil {
		return s.dbError(ctx, err, fmt.Sprintf("rebuild %q", name))
	}
	s.Notify()
	return nil
}

// ParkedEvent is an event a projection gave up on under PoisonPark.
type ParkedEvent struct {
	Projection    string
	EventID       uuid.UUID
	Position      Position
	StreamID      string
	StreamVersion int64
	Type          string
	Error         string
	Attempts      int
	// Status: "parked" (waiting), "retry" (to be re-applied by the next
	// batch) or "skipped".
	Status   string
	ParkedAt time.Time
	Updated  time.Time
}

// ParkedEvents lists the projection's parked events in log order.
func (s *Store) ParkedEvents(ctx context.Context, projection string) ([]ParkedEvent, error) {
	if checkName("projection", projection) != nil {
		return nil, nil // no projection has such a name
	}
	rows, err := s.queries.ParkedEventList(ctx, projection)
	if err != nil {
		return nil, s.dbError(ctx, err, fmt.Sprintf("parked events of %q", projection))
	}
	out := make([]ParkedEvent, len(rows))
	for i, r := range rows {
		out[i] = ParkedEvent{
			Projection: r.Projection, EventID: r.EventID,
			Position: Position{TransactionID: r.TransactionID, GlobalPosition: r.GlobalPosition},
			StreamID: r.StreamID, StreamVersion: r.StreamVersion, Type: r.EventType, Error: r.Error,
			Attempts: int(r.Attempts), Status: r.Status, ParkedAt: r.ParkedAt, Updated: r.UpdatedAt,
		}
	}
	return out, nil
}

// RetryParked asks the projection's active instance to re-apply a parked
// event in its next batch: on success it leaves the parked table, on failure
// it is parked again with the new error. ErrNotFound if no such parked
// event. SQL: SELECT conduit.retry_parked_event(projection, event_id).
func (s *Store) RetryParked(ctx context.Context, projection string, eventID uuid.UUID) error {
	if checkName("projection", projection) != nil {
		return fmt.Errorf("conduit: parked event %s of %q: %w", eventID, projection, ErrNotFound)
	}
	found, err := s.queries.ParkedEventRetry(ctx, dbgen.ParkedEventRetryParams{Projection: projection, EventID: eventID})
	if err != nil {
		return s.dbError(ctx, err, fmt.Sprintf("retry parked event %s of %q", eventID, projection))
	}
	if !found {
		return fmt.Errorf("conduit: parked event %s of %q: %w", eventID, projection, ErrNotFound)
	}
	s.Notify()
	return nil
}

// SkipParked gives up on a parked event for good; it stays listed as
// "skipped". ErrNotFound if no such parked event.
// SQL: SELECT conduit.skip_parked_event(projection, event_id).
func (s *Store) SkipParked(ctx context.Context, projection string, eventID uuid.UUID) error {
	if checkName("projection", projection) != nil {
		return fmt.Errorf("conduit: parked event %s of %q: %w", eventID, projection, ErrNotFound)
	}
	found, err := s.queries.ParkedEventSkip(ctx, dbgen.ParkedEventSkipParams{Projection: projection, EventID: eventID})
	if err != nil {
		return s.dbError(ctx, err, fmt.Sprintf("skip parked event %s of %q", eventID, projection))
	}
	if !found {
		return fmt.Errorf("conduit: parked event %s of %q: %w", eventID, projection, ErrNotFound)
	}
	return nil
}
