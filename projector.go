package conduit

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/conduit-es/conduit/internal/dberr"
	"github.com/conduit-es/conduit/internal/dbgen"
	"github.com/conduit-es/conduit/internal/engine"
)

// PoisonPolicy says what a projector does with an event its projection keeps
// failing on.
type PoisonPolicy int

const (
	// PoisonStop retries the event ProjectorConfig.MaxAttempts times, then
	// stops at it: the projection's state becomes stalled, with the event
	// and the error, and the projector retries it every
	// ProjectorConfig.StalledRetryInterval until it succeeds (after a fix is
	// deployed) or the projection is rebuilt. Other projections go on.
	PoisonStop PoisonPolicy = iota
	// PoisonPark retries the event MaxAttempts times, then parks it in
	// conduit.parked_events, in the same transaction as the checkpoint that
	// passes it, and goes on. Parked events can be listed, retried and
	// skipped (Store.ParkedEvents, RetryParked, SkipParked).
	PoisonPark
)

// Defaults for ProjectorConfig fields left zero.
const (
	BatchSizeDefault            = 1000
	LeaseDurationDefault        = 10 * time.Second
	PollIntervalDefault         = time.Second
	MaxAttemptsDefault          = 3
	RetryBackoffDefault         = 100 * time.Millisecond
	StalledRetryIntervalDefault = 30 * time.Second
)

// Limits of ProjectorConfig fields: NewProjector refuses a field above its
// limit, or below the least value its doc comment gives, with a
// *ConfigError. A zero field still means its default.
const (
	BatchSizeLimit            = 100_000
	LeaseDurationLimit        = time.Hour
	PollIntervalLimit         = time.Hour
	MaxAttemptsLimit          = 1000
	RetryBackoffLimit         = time.Minute
	StalledRetryIntervalLimit = 24 * time.Hour
	HandlerTimeoutLimit       = time.Hour
)

// ProjectorConfig configures a Projector. The zero value means defaults.
type ProjectorConfig struct {
	// BatchSize is the most events applied in one transaction, 1 to
	// BatchSizeLimit (100,000): a batch holds its events, data included, in
	// memory, and the cost per batch is already a small share at 10,000
	// (see BENCHMARKS.md). While catching up it may also hold events read
	// ahead: two reads of up to 10,000 events each (a whole number of
	// batches, one if BatchSize is larger; see Config.MaxProjectorConns).
	// A batch also stops taking events after HandlerTimeout/10 (1s by
	// default), which bounds the latency a large batch adds under load; a
	// BatchProjection's batch goes to ApplyBatch whole, in one call that
	// HandlerTimeout bounds. Defaults to BatchSizeDefault.
	BatchSize int
	// LeaseDuration is how long an instance keeps the projection after it
	// last renewed its lease. The owner renews it every LeaseDuration/3
	// from a goroutine of its own, however long a batch takes; another
	// instance takes over within about this long after the owner dies or
	// is paused (for one paused in the middle of a batch, see
	// HandlerTimeout). From 100ms to LeaseDurationLimit (1h). Defaults to
	// LeaseDurationDefault.
	LeaseDuration time.Duration
	// HandlerTimeout bounds one call of the projection's handler (Apply,
	// or ApplyBatch for a BatchProjection), its time in Go and in the
	// database together. (A whole batch's ApplyBatch that overruns it counts
	// no attempt: the batch is applied again one event at a time, each
	// call bounded alone.) A handler still running
	// after HandlerTimeout has its context cancelled and the event counts
	// as a failed attempt ("handler ran longer than
	// ProjectorConfig.HandlerTimeout"), at once, even if the handler
	// ignores its context and never returns: a handler too slow for it ends
	// under the poison policy instead of being retried forever.
	//
	// It also bounds how long a batch's transaction sits idle, which is
	// how the locks of an owner paused in the middle of a batch are freed:
	// a batch stops taking events after HandlerTimeout/10 and commits what
	// it has applied, and the server ends a session left idle in a batch's
	// transaction for 1.25 × HandlerTimeout
	// (idle_in_transaction_session_timeout). A live owner never gets there:
	// its handlers are bounded. Another instance takes over from an owner
	// paused in a batch within about max(LeaseDuration, 1.25 ×
	// HandlerTimeout). From 10ms to HandlerTimeoutLimit (1h). Defaults to
	// LeaseDuration.
	HandlerTimeout time.Duration
	// PollInterval is how often the projector looks for new events without
	// being woken. Polling is the guarantee; wake-ups only cut latency.
	// From 1ms to PollIntervalLimit (1h). Defaults to PollIntervalDefault.
	PollInterval time.Duration
	// PollOnly turns off LISTEN: the projector is woken only by appends of
	// the same Store in this process, and polls. Use it behind PgBouncer in
	// transaction mode, where LISTEN does not work. Defaults to false.
	PollOnly bool
	// Poison is the policy for events the projection keeps failing on.
	// Defaults to PoisonStop.
	Poison PoisonPolicy
	// MaxAttempts is how many times an event is tried before the poison
	// policy applies, 1 to MaxAttemptsLimit (1,000). Defaults to
	// MaxAttemptsDefault.
	MaxAttempts int
	// RetryBackoff is the wait before the second try of an event the
	// projection failed on, and after the first of a run of database
	// errors. Each further failure doubles it, up to 30 times RetryBackoff;
	// each wait is drawn at random between half and the whole of that
	// (jitter). From 1ms to RetryBackoffLimit (1 minute, so waits reach 30
	// minutes at most). Defaults to RetryBackoffDefault.
	RetryBackoff time.Duration
	// StalledRetryInterval is how often a stalled projector tries its
	// poison event again, from 1ms to StalledRetryIntervalLimit (24h).
	// Defaults to StalledRetryIntervalDefault.
	StalledRetryInterval time.Duration
	// InstanceID names this instance in the lease and the status. Defaults
	// to host-pid-random.
	InstanceID string
	// DurableCommit makes each batch wait for its commit to be flushed to
	// disk (the session's synchronous_commit). By default batches commit
	// with synchronous_commit off: no WAL flush per batch, which speeds up
	// catch-up and cuts latency. It is safe for a projection: a server crash
	// can lose only the last batches' commits, and it loses each one whole,
	// read-table rows and checkpoint together, so the projector re-applies
	// exactly those events. Set it when the read tables feed something that
	// must never see a row go away and come back. Defaults to false.
	DurableCommit bool
}

func (c *ProjectorConfig) withDefaults() (ProjectorConfig, error) {
	var out ProjectorConfig
	if c != nil {
		out = *c
	}
	setDefault(&out.BatchSize, BatchSizeDefault)
	setDefault(&out.LeaseDuration, LeaseDurationDefault)
	setDefault(&out.PollInterval, PollIntervalDefault)
	setDefault(&out.MaxAttempts, MaxAttemptsDefault)
	setDefault(&out.RetryBackoff, RetryBackoffDefault)
	setDefault(&out.StalledRetryInterval, StalledRetryIntervalDefault)
	setDefault(&out.HandlerTimeout, out.LeaseDuration)
	// Durations start at 1ms: a bare number is nanoseconds (5 is 5ns).
	const ms = time.Millisecond
	if err := checkRanges(
		countRange("ProjectorConfig.BatchSize", out.BatchSize, 1, BatchSizeLimit),
		durationRange("ProjectorConfig.LeaseDuration", out.LeaseDuration, 100*ms, LeaseDurationLimit),
		durationRange("ProjectorConfig.PollInterval", out.PollInterval, ms, PollIntervalLimit),
		countRange("ProjectorConfig.MaxAttempts", out.MaxAttempts, 1, MaxAttemptsLimit),
		durationRange("ProjectorConfig.RetryBackoff", out.RetryBackoff, ms, RetryBackoffLimit),
		durationRange("ProjectorConfig.StalledRetryInterval", out.StalledRetryInterval, ms, StalledRetryIntervalLimit),
		durationRange("ProjectorConfig.HandlerTimeout", out.HandlerTimeout, 10*ms, HandlerTimeoutLimit),
	); err != nil {
		return out, err
	}
	if out.Poison != PoisonStop && out.Poison != PoisonPark {
		return out, &ConfigError{Field: "ProjectorConfig.Poison", Reason: fmt.Sprintf("unknown policy %d", out.Poison)}
	}
	if out.InstanceID == "" {
		out.InstanceID = defaultInstanceID()
	}
	if err := checkName("ProjectorConfig.InstanceID", out.InstanceID); err != nil {
		return out, err
	}
	return out, nil
}

// defaultInstanceID names an instance of a projector or relay: host-pid-random.
func defaultInstanceID() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b)
}

// Projector runs one projection asynchronously: it follows the global log
// from the projection's checkpoint, in batches, each applied and
// checkpointed in one transaction. Run as many instances as you like, in as
// many processes: one holds the lease and applies; the others stand by.
type Projector struct {
	store      *Store
	projection Projection
	name       string
	cfg        ProjectorConfig
	types      []string // handled types; nil: all
	tables     []string
	log        *slog.Logger

	running atomic.Bool // Run or CatchUp is in progress

	// Owned by the goroutine in Run or CatchUp.
	lease *engine.Lease // the projection's lease, kept alive while held
	// retryStalled lets the next batch try the event a stalled projection
	// is stalled at: once on taking the lease, then every
	// StalledRetryInterval.
	retryStalled bool
	// isolate, set after a BatchProjection failed on a batch, makes the
	// batches apply that batch's events one at a time, to find the failing
	// one; nil: batches are applied whole.
	isolate *isolation
	// shadowBackoff and shadowRetryAt space the retries of a failing
	// shadow batch of an online rebuild.
	shadowBackoff *engine.Backoff
	shadowRetryAt time.Time
	// swapBackoff spaces the tries of a swap that timed out waiting for
	// readers (it also sets shadowRetryAt).
	swapBackoff *engine.Backoff
	// ahead is the next batch's events being read while the current batch
	// applies and commits; reading counts the reads in flight.
	ahead     *readAhead
	reading   sync.WaitGroup
	aheadUsed atomic.Int64 // batches whose events were read ahead (for tests)
	// aheadSecond counts the read ahead's statements that skipped the
	// events of the one before them, read at the same time (for tests).
	aheadSecond atomic.Int64
	// aheadEvents is how many events one statement of the read ahead
	// fetches: readAheadEvents (tests set fewer).
	aheadEvents int
	begunUsed   atomic.Int64 // batches run in a transaction begun by the previous one (for tests)
	// committed is the checkpoint this instance's last batch committed; nil
	// when unknown (first batch, after an error, a stall or a pause).
	committed *committedCheckpoint
	// next is the transaction the last batch began for the next one, in
	// the round trip of its commit, when the next batch follows at once.
	next *projectorConn
}

// isolation is the span of a batch whose ApplyBatch failed: the events
// after from, up to and including through.
type isolation struct{ from, through Position }

// NewProjector returns a projector for p on store's database. It does not
// touch the database. A nil cfg means defaults.
func NewProjector(store *Store, p Projection, cfg *ProjectorConfig) (*Projector, error) {
	if store == nil || p == nil {
		return nil, errors.New("conduit: NewProjector: nil store or projection")
	}
	if err := checkName("projection name", p.Name()); err != nil {
		return nil, err
	}
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	pr := &Projector{store: store, projection: p, name: p.Name(), cfg: c}
	if f, ok := p.(EventTypeFilter); ok && len(f.EventTypes()) > 0 {
		pr.types = f.EventTypes()
	}
	if o, ok := p.(ReadTableOwner); ok {
		pr.tables = o.ReadTables()
	}
	store.projectors.add(pr.name)
	pr.log = store.cfg.Logger.With(slog.String("projection", pr.name), slog.String("instance", c.InstanceID))
	pr.lease = pr.newLease()
	pr.shadowBackoff = c.retryBackoff()
	pr.swapBackoff = engine.NewBackoff(swapRetryFirst, swapRetryLimit)
	return pr, nil
}

// Name returns the projection's name.
func (p *Projector) Name() string { return p.name }

// InstanceID returns the name this instance holds the lease under.
func (p *Projector) InstanceID() string { return p.cfg.InstanceID }

// Run applies the projection until ctx ends, then rolls back any batch in
// flight, releases the lease and returns nil. A Projector runs once at a
// time (Run or CatchUp); for several instances in one process make several
// Projectors. Database errors are retried with backoff; Run returns early
// only for an error no retry can cure (ErrRestoredDatabase).
func (p *Projector) Run(ctx context.Context) error { return p.run(ctx, false) }

// CatchUp applies the projection until it has passed every event committed
// before the call (the log's Head), then releases the lease and returns
// nil: read tables up to date in a test, without sleeps, or in a script. It
// works as Run does, with these differences:
//   - if another instance holds the lease, CatchUp waits for it to pass the
//     head, as WaitFor does (and takes over if the lease expires);
//   - under PoisonStop a stall returns the *ProjectionStalledError at once
//     (under PoisonPark the event is parked and CatchUp goes on);
//   - a paused projection (Store.PauseProjection) returns a
//     *ProjectionPausedError at once;
//   - events held behind the safe horizon are waited for: they become
//     readable once every transaction older than the head's has ended;
//   - errors a retry may cure (a dropped connection, a restart) are
//     retried with backoff, others returned; it returns ctx's error if ctx
//     ends first.
//
// It refuses to run while Run or CatchUp runs on the same Projector.
func (p *Projector) CatchUp(ctx context.Context) error { return p.run(ctx, true) }

// run is Run, or CatchUp when catchUp is set.
func (p *Projector) run(ctx context.Context, catchUp bool) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("conduit: Projector already running (Run or CatchUp); make one Projector per concurrent instance")
	}
	defer p.running.Store(false)
	var head *Position // CatchUp's goal
	// Events held behind the horizon become readable when the transaction
	// holding it ends, which may append nothing and so wake nobody: look
	// again soon, then less and less often (up to 50ms when a caller waits).
	horizonWaitMax := p.cfg.PollInterval
	if catchUp {
		h, err := p.store.Head(ctx)
		if err != nil {
			return err
		}
		head = &h
		horizonWaitMax = min(horizonWaitMax, waitPollMax)
	} else if !p.cfg.PollOnly {
		p.store.listener.Acquire()
		defer p.store.listener.Release()
	}
	defer p.lease.Release()
	defer p.dropReadAhead()
	defer p.dropNext(ctx)

	behindHorizon := engine.NewBackoff(time.Millisecond, horizonWaitMax)
	failures := p.cfg.retryBackoff()
	standby := engine.NewBackoff(time.Millisecond, waitPollMax) // CatchUp's, while another instance applies
	registered := false
	for ctx.Err() == nil {
		wake := p.store.appended.Wait() // taken before reading: no wake-up is lost
		progressed := p.store.progress.Wait()
		res, err := p.step(ctx, &registered)
		if err != nil || res == nil || res.caughtUp || res.held || res.paused {
			p.dropNext(ctx) // no batch follows at once
		}
		var stalled *ProjectionStalledError
		switch {
		case err == nil:
			failures.Reset()
			switch {
			case res == nil: // a failed attempt at an event, counted; its retry waited already
			case head != nil && !res.checkpoint.Before(*head):
				return nil
			case res.paused && head != nil:
				return &ProjectionPausedError{Projection: p.name}
			case res.paused:
				// ResumeProjection wakes the projectors of its Store, and
				// conduit.resume_projection notifies; the poll is the guarantee.
				engine.Idle(ctx, wake, p.cfg.PollInterval)
			case res.held: // caught up, events held behind the horizon
				engine.Idle(ctx, wake, behindHorizon.Next())
			case res.caughtUp:
				behindHorizon.Reset()
				engine.Idle(ctx, wake, p.cfg.PollInterval)
			default:
				behindHorizon.Reset()
			}
		case ctx.Err() != nil: // the loop ends
		case errors.Is(err, ErrRestoredDatabase):
			p.log.Error("conduit: projector refuses to run", slog.Any("error", err))
			return err
		case errors.Is(err, errLeaseLost):
			p.lease.Lose()
		case errors.As(err, &stalled):
			if head != nil {
				return err
			}
			engine.Idle(ctx, nil, p.cfg.StalledRetryInterval)
			p.retryStalled = true
		case errors.Is(err, errStandby) && head != nil:
			// As WaitFor: the instance holding the lease may pass the head
			// (or stall); trying to acquire on every round, CatchUp takes
			// over once its lease expires.
			switch passed, err := p.store.projectionPassed(ctx, p.name, *head); {
			case passed:
				return nil
			case errors.Is(err, ErrProjectionStalled), errors.Is(err, ErrProjectionPaused):
				return err
			}
			engine.Idle(ctx, progressed, standby.Next())
		case errors.Is(err, errStandby):
			engine.Idle(ctx, wake, min(p.cfg.PollInterval, p.cfg.LeaseDuration/3))
		case head != nil && !dberr.IsTransient(err):
			return fmt.Errorf("conduit: catch up %q: %w", p.name, poolerHint(err))
		default:
			wait := failures.Next()
			p.log.Warn("conduit: projector error; retrying", slog.Any("error", poolerHint(err)), slog.Duration("retry_in", wait))
			engine.Idle(ctx, nil, wait)
		}
	}
	if head != nil {
		return fmt.Errorf("conduit: catch up %q to %s: %w", p.name, *head, ctx.Err())
	}
	return nil
}

// step does one unit of work: register, acquire, and one batch. It returns
// the batch's result if one committed, nothing after a failed attempt at an
// event, and a *ProjectionStalledError while the projection is stalled.
func (p *Projector) step(ctx context.Context, registered *bool) (*batchResult, error) {
	q := p.store.queries
	if !*registered {
		if err := q.ProjectionRegister(ctx, dbgen.ProjectionRegisterParams{Name: p.name, ReadTables: p.tablesOrEmpty()}); err != nil {
			return nil, fmt.Errorf("register projection %q: %w", p.name, err)
		}
		*registered = true
	}
	if p.next != nil && !p.lease.Kept(p.next.epoch) {
		p.dropNext(ctx) // begun under a lease that is gone (and the pool may be needed to take it again)
	}
	acquired, err := p.lease.Acquire(ctx)
	if errors.Is(err, errStandby) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("acquire lease: %w", err)
	}
	if acquired {
		if err := p.checkTransactionIDs(ctx); err != nil {
			// Give the lease back: the next step acquires it again and
			// checks again (Run ends here on a restored database).
			p.lease.Release()
			return nil, err
		}
		p.retryStalled = true
	}

	bctx, span := p.store.tel.tracer.Start(ctx, "conduit.projector.batch",
		trace.WithAttributes(attrProjection.String(p.name)))
	start := time.Now()
	res, err := p.batch(bctx)
	p.store.tel.batchDone(ctx, p.name, res.passed, time.Since(start))
	endSpan(span, err)
	var (
		fail      *applyFailure
		batchFail *batchFailure
	)
	switch {
	case errors.As(err, &fail):
		return nil, p.handleFailure(ctx, fail)
	case errors.As(err, &batchFail) && ctx.Err() == nil && !databaseFault(batchFail.err):
		// Not the database's fault: find the event at fault, next.
		p.isolate = &batchFail.span
		p.log.Warn("conduit: batch failed; applying its events one at a time to find the failing one",
			slog.String("through", batchFail.span.through.String()), slog.Any("error", batchFail.err))
		return nil, nil
	case errors.As(err, &batchFail):
		return nil, batchFail.err
	case err != nil:
		return nil, err
	}
	if res.stalled != nil {
		return nil, res.stalled
	}
	if res.shadow {
		more, err := p.shadowStep(ctx)
		if err != nil {
			return nil, err
		}
		if more { // keep stepping: the replay goes on between live batches
			res.caughtUp, res.held = false, false
		}
	}
	return &res, nil
}

func (p *Projector) tablesOrEmpty() []string {
	if p.tables == nil {
		return []string{}
	}
	return p.tables
}

func (p *Projector) checkTransactionIDs(ctx context.Context) error {
	r, err := p.store.queries.TransactionIDsCheck(ctx)
	if err != nil {
		return fmt.Errorf("check transaction ids: %w", err)
	}
	if !r.Ok {
		return &RestoredDatabaseError{MaxStored: r.MaxStored, NextTransactionID: r.NextXid}
	}
	return nil
}

// applyFailure is a projection's error on one event of a batch.
type applyFailure struct {
	event Event
	err   error
}

func (f *applyFailure) Error() string { return f.err.Error() }
func (f *applyFailure) Unwrap() error { return f.err }

// batchFailure is a BatchProjection's error on a whole batch.
type batchFailure struct {
	span isolation
	err  error
}

func (f *batchFailure) Error() string { return f.err.Error() }
func (f *batchFailure) Unwrap() error { return f.err }

type batchResult struct {
	checkpoint Position // committed by the batch
	passed     int      // events read (for the metrics)
	caughtUp   bool
	held       bool // caught up, but committed events wait behind the horizon (or just committed)
	// stalled: the batch stopped at a poison event under PoisonStop and
	// applied nothing.
	stalled *ProjectionStalledError
	// paused: the projection is paused (conduit.pause_projection); the
	// batch applied nothing.
	paused bool
	shadow bool // an online rebuild is under way
}

// batch applies up to BatchSize events after the checkpoint in one
// transaction that also moves the checkpoint.
//
// An event the projection has failed on (stored with the projection, so
// every instance sees it) is tried alone, once the events before it are
// committed; after MaxAttempts failures the poison policy applies to it
// before any further try: under PoisonPark the batch parks it and moves
// the checkpoint past it, under PoisonStop it marks the projection stalled.
// A stalled projection's event is tried again when p.retryStalled allows.
func (p *Projector) batch(ctx context.Context) (batchResult, error) {
	var res batchResult
	runCtx := ctx   // outlives the batch: for its read-ahead
	var epoch int64 // the lease's, as the batch found it
	bc, err := p.batchConn(ctx)
	if err != nil {
		return res, err
	}
	release := bc.release
	start := time.Now()
	// The batch's statements and its handlers run under bctx, which the
	// lease keeper cancels when a handler overruns HandlerTimeout; the
	// transaction itself under ctx, so that its rollback still goes out.
	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// end is how the batch's transaction ends: saveCheckpoint commits it
	// with the checkpoint (and may begin the next one); else it is
	// committed, or rolled back on an error, here.
	var end batchEnd
	defer func() {
		if v := recover(); v != nil {
			p.closeBatchConn(ctx, bc, true)
			panic(v)
		}
	}()
	err = func(tx pgx.Tx) error {
		ctx := bctx
		q := p.store.queries.WithTx(tx)
		epoch = p.lease.Epoch()
		lock := dbgen.ProjectionLockForBatchParams{
			IdleTimeout: strconv.FormatInt(p.batchIdleTimeout().Milliseconds(), 10),
			Durable:     p.cfg.DurableCommit,
			Name:        p.name, Owner: p.cfg.InstanceID, Epoch: epoch,
		}
		var (
			row    dbgen.ProjectionLockForBatchRow
			listed []Event   // read with the lock, after guess
			guess  *Position // the checkpoint this instance's last batch committed
		)
		if c := p.committed; c != nil && c.epoch == epoch && p.ahead == nil {
			// One round trip for the lock and the read, after the checkpoint
			// this instance committed last; used if the lock finds it there.
			guess = &c.checkpoint
			listed = make([]Event, 0, min(p.cfg.BatchSize, 256))
			row, err = dbgen.ProjectionLockForBatchThenList(ctx, tx, lock, p.listParams(*guess, p.cfg.BatchSize),
				func(r dbgen.ConduitEvent) error {
					listed = append(listed, eventFromRow(r))
					return nil
				})
		} else {
			row, err = q.ProjectionLockForBatch(ctx, lock)
		}
		p.committed = nil // known again once this batch commits
		if errors.Is(err, pgx.ErrNoRows) {
			return errLeaseLost
		}
		if err != nil {
			return err
		}
		checkpoint := Position{TransactionID: row.CheckpointTx, GlobalPosition: row.CheckpointPosition}
		if row.Paused {
			// conduit.pause_projection: apply nothing, retry nothing, until
			// resumed. The lease stays with this instance (its keeper renews
			// it).
			res.checkpoint, res.paused = checkpoint, true
			return nil
		}
		res.shadow = row.ShadowActive
		end.noBegin = res.shadow // an online rebuild's shadow batch comes next
		run := &engine.Batch{Data: checkpoint, Cancel: cancel, Release: release}
		if row.RetryPending {
			if err := p.retryParked(ctx, tx, q, run); err != nil {
				return err
			}
		}
		events, ok := p.takeReadAhead(ctx, checkpoint, epoch)
		if !ok {
			if guess != nil && *guess == checkpoint {
				events = listed
			} else if events, err = p.readBatch(ctx, q, checkpoint, p.cfg.BatchSize); err != nil {
				return err
			}
			if len(events) == p.cfg.BatchSize {
				// More to come: read it while this batch applies and commits.
				p.startReadAhead(runCtx, events[len(events)-1].Position, epoch)
			}
		}
		res.caughtUp = len(events) < p.cfg.BatchSize
		res.passed = len(events)
		if span := trace.SpanFromContext(ctx); span.IsRecording() {
			for _, l := range p.store.tel.eventLinks(events) {
				span.AddLink(l)
			}
		}
		failing := slices.IndexFunc(events, func(e Event) bool { return e.ID == row.FailingEventID })
		if failing >= 0 {
			res.caughtUp = false
			events = events[:max(failing, 1)]
		}
		if failing == 0 && int(row.FailedAttempts) >= p.cfg.MaxAttempts {
			e := events[0]
			reason := (&ProjectionError{Projection: p.name, Event: e, Err: errors.New(row.LastError)}).Error()
			stalledHere := ProjectionState(row.State) == StateStalled && row.StalledEventID == e.ID
			switch {
			case p.cfg.Poison == PoisonPark:
				return p.park(ctx, tx, q, e, row, &res, &end)
			case !stalledHere:
				if err := q.ProjectionStall(ctx, dbgen.ProjectionStallParams{
					Reason: reason, EventID: e.ID, Name: p.name, Owner: p.cfg.InstanceID, Epoch: p.lease.Epoch(),
				}); err != nil {
					return err
				}
				p.log.Error("conduit: projection stalled on poison event", slog.String("event_id", e.ID.String()),
					slog.String("stream", e.StreamID), slog.Int64("version", e.StreamVersion),
					slog.Int("attempts", int(row.FailedAttempts)), slog.String("error", row.LastError))
				res.stalled = &ProjectionStalledError{Projection: p.name, EventID: e.ID, Reason: reason}
				return nil
			case !p.retryStalled:
				res.stalled = &ProjectionStalledError{Projection: p.name, EventID: e.ID, Reason: row.StallReason}
				return nil
			}
			p.retryStalled = false // this batch tries it once more
		}

		if iso := p.isolate; iso != nil && (checkpoint.Before(iso.from) || !checkpoint.Before(iso.through)) {
			p.isolate = nil // passed, or the checkpoint went back (a rebuild)
		}
		bp, batched := p.projection.(BatchProjection)
		if batched && failing != 0 && p.isolate == nil {
			return p.applyWhole(ctx, tx, bp, events, checkpoint, run, &res, &end)
		}
		if iso := p.isolate; iso != nil {
			events = events[:countThrough(events, iso.through)]
			res.caughtUp = false
		}
		applied := int64(0)
		for i, e := range events {
			if !p.handles(e.Type) {
				checkpoint = e.Position
				continue
			}
			if i > 0 && time.Since(start) >= p.cfg.HandlerTimeout/10 {
				res.caughtUp = false // cut by time: commit what is applied (see HandlerTimeout)
				break
			}
			if err := p.apply(ctx, tx, e, run, false); err != nil {
				return &applyFailure{event: e, err: err}
			}
			applied++
			checkpoint = e.Position
		}
		res.checkpoint = checkpoint
		res.held, err = p.saveCheckpoint(ctx, tx, checkpoint, applied, res.caughtUp, failing == 0, &end)
		return err
	}(bc.tx)
	switch {
	case err != nil:
		p.closeBatchConn(ctx, bc, true)
	case end.committed:
		if end.begun && ctx.Err() == nil {
			bc.epoch = epoch
			p.next = bc // the next batch's transaction, begun
		} else {
			p.closeBatchConn(ctx, bc, end.begun)
		}
	default:
		err = bc.tx.Commit(ctx)
		p.closeBatchConn(ctx, bc, err != nil)
	}
	if err == nil && res.stalled == nil && !res.paused {
		p.committed = &committedCheckpoint{checkpoint: res.checkpoint, epoch: epoch}
	} else {
		// The checkpoint stays short of any read ahead: drop it now rather
		// than hold it through a retry's wait, a stall or a pause.
		p.dropReadAheadBuffer()
	}
	if err == nil {
		p.store.progress.Notify() // also wakes WaitFor to report a stall
	} else if errors.Is(context.Cause(bctx), errLeaseLost) {
		err = errLeaseLost // the keeper found the lease lost, and cancelled the batch
	}
	return res, err
}

// applyWhole applies events, the batch's, with one call of bp.ApplyBatch
// (the types it handles), and moves the checkpoint past them. A failure is
// a *batchFailure: the batch is then isolated event by event. (It never
// holds the event the projection is failing on: that one goes alone.)
func (p *Projector) applyWhole(ctx context.Context, tx pgx.Tx, bp BatchProjection, events []Event,
	from Position, run *engine.Batch, res *batchResult, end *batchEnd) error {
	handled := events
	if p.types != nil {
		handled = make([]Event, 0, len(events))
		for _, e := range events {
			if p.handles(e.Type) {
				handled = append(handled, e)
			}
		}
	}
	if len(handled) > 0 {
		if err := p.applyBatch(ctx, tx, bp, handled, run); err != nil {
			return &batchFailure{span: isolation{from: from, through: events[len(events)-1].Position}, err: err}
		}
	}
	res.checkpoint = from
	if len(events) > 0 {
		res.checkpoint = events[len(events)-1].Position
	}
	var err error
	res.held, err = p.saveCheckpoint(ctx, tx, res.checkpoint, int64(len(handled)), res.caughtUp, false, end)
	return err
}

// countThrough counts the events up to and including position through.
func countThrough(events []Event, through Position) int {
	n := 0
	for n < len(events) && !through.Before(events[n].Position) {
		n++
	}
	return n
}

// park parks e, the poison event at the head of the batch, and moves the
// checkpoint past it, in the batch's transaction.
func (p *Projector) park(ctx context.Context, tx pgx.Tx, q *dbgen.Queries, e Event, row dbgen.ProjectionLockForBatchRow,
	res *batchResult, end *batchEnd) error {
	if err := q.ParkedEventInsert(ctx, dbgen.ParkedEventInsertParams{
		Projection: p.name, EventID: e.ID, TransactionID: e.Position.TransactionID,
		GlobalPosition: e.Position.GlobalPosition, StreamID: e.StreamID,
		StreamVersion: e.StreamVersion, EventType: e.Type,
		Error: row.LastError, Attempts: row.FailedAttempts,
	}); err != nil {
		return err
	}
	p.store.tel.parked.Add(ctx, 1, metric.WithAttributes(attrProjection.String(p.name)))
	p.log.Warn("conduit: parked poison event", slog.String("event_id", e.ID.String()),
		slog.String("stream", e.StreamID), slog.Int64("version", e.StreamVersion),
		slog.Int("attempts", int(row.FailedAttempts)), slog.String("error", row.LastError))
	var err error
	res.checkpoint = e.Position
	res.held, err = p.saveCheckpoint(ctx, tx, e.Position, 0, false, true, end)
	return err
}

// saveCheckpoint ends a batch: it saves the checkpoint and commits, in one
// round trip, and reports whether the batch caught up yet events follow the
// checkpoint (see batchResult.held). passedFailing says the batch passed the
// event the projection was failing on. When the batch did not catch up (the
// next one follows at once), the same round trip begins the next batch's
// transaction. end records what happened to the transaction.
func (p *Projector) saveCheckpoint(ctx context.Context, tx pgx.Tx, cp Position, applied int64, caughtUp, passedFailing bool,
	end *batchEnd) (bool, error) {
	eventsAfter, committed, begun, err := dbgen.ProjectionCheckpointSaveCommit(ctx, tx, dbgen.ProjectionCheckpointSaveParams{
		CheckpointTx: cp.TransactionID, CheckpointPosition: cp.GlobalPosition,
		LeaseSeconds: p.cfg.LeaseDuration.Seconds(), Applied: applied, CaughtUp: caughtUp,
		PassedFailing: passedFailing, Name: p.name, Owner: p.cfg.InstanceID, Epoch: p.lease.Epoch(),
	}, !caughtUp && !end.noBegin && !p.store.connsWanted())
	end.committed, end.begun = committed, begun
	if dberr.Classify(err) == dberr.LeaseLost {
		return false, errLeaseLost
	}
	return eventsAfter, err
}

// batchEnd is how a batch's transaction ended.
type batchEnd struct {
	noBegin   bool // begin no transaction for the next batch (it does not follow at once)
	committed bool // saveCheckpoint committed it
	begun     bool // and began the next one on the same connection
}

// projectorConn is a batch's connection, its transaction, and its slot of
// the projectors' connection budget.
type projectorConn struct {
	conn    *pgxpool.Conn
	tx      pgx.Tx
	release func()
	epoch   int64 // the lease's, when its last batch committed
}

// batchConn returns the transaction the last batch began for this one, or
// takes a slot of the budget and a connection of the pool, and begins one.
// (A transaction begun and not used yet has no snapshot and no transaction
// id: it holds no horizon back.)
func (p *Projector) batchConn(ctx context.Context) (*projectorConn, error) {
	if bc := p.next; bc != nil {
		p.next = nil
		p.begunUsed.Add(1)
		return bc, nil
	}
	release, err := p.store.takeProjectorConn(ctx)
	if err != nil {
		return nil, err
	}
	conn, err := p.store.pool.Acquire(ctx)
	if err != nil {
		release()
		return nil, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		conn.Release()
		release()
		return nil, err
	}
	return &projectorConn{conn: conn, tx: tx, release: release}, nil
}

// closeBatchConn rolls bc's transaction back if rollback (it may be open)
// and gives its connection and slot back.
func (p *Projector) closeBatchConn(ctx context.Context, bc *projectorConn, rollback bool) {
	if rollback {
		// Even once ctx has ended (a rollback that cannot go out closes the
		// connection, which rolls back too).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = bc.tx.Rollback(rctx)
		cancel()
	}
	bc.conn.Release() // a connection left in a transaction is closed by the pool
	bc.release()
}

// dropNext rolls back the transaction the last batch began for the next,
// when the next batch is not to follow at once.
func (p *Projector) dropNext(ctx context.Context) {
	if bc := p.next; bc != nil {
		p.next = nil
		p.closeBatchConn(ctx, bc, true)
	}
}

// committedCheckpoint is the checkpoint an instance's last batch committed,
// under the lease of epoch.
type committedCheckpoint struct {
	checkpoint Position
	epoch      int64
}

func (p *Projector) listParams(after Position, limit int) dbgen.EventListForProjectionParams {
	types := p.types
	if types == nil {
		types = []string{} // all
	}
	return dbgen.EventListForProjectionParams{
		Types: types, AfterTx: after.TransactionID, AfterPosition: after.GlobalPosition, MaxCount: int32(limit),
	}
}

func (p *Projector) readBatch(ctx context.Context, q *dbgen.Queries, after Position, limit int) ([]Event, error) {
	// Into the batch straight from the wire: its handlers use the
	// connection, so the batch is read whole first, but no page of rows is
	// built to be copied.
	events := make([]Event, 0, min(limit, 256))
	err := q.EventListForProjectionEach(ctx, p.listParams(after, limit), func(r dbgen.ConduitEvent) error {
		events = append(events, eventFromRow(r))
		return nil
	})
	return events, err
}

// readAheadEvents is how many events a read ahead fetches in one statement
// (a whole number of batches, at least one): fewer statements per event
// than one per batch.
const readAheadEvents = 10_000

// Bounds of a read ahead: at most readAheadStatements statements in flight,
// and at most readAheadHeld fetches' worth of events held (fetched, and in
// flight) at once.
const (
	readAheadStatements = 2
	readAheadHeld       = 3
)

// readAhead is the events after from, read ahead under the lease of epoch:
// events already fetched (handed out a batch at a time), and the statements
// in flight that fetch those after them.
type readAhead struct {
	from   Position
	epoch  int64
	events []Event
	// The statements in flight (or done, not yet taken), in log order.
	// The first reads the events after end, the second those after its.
	fetches []*fetchAhead
	end     Position // the last event fetched (from, before any)
	ended   bool     // a fetch came back short: the log's end, for now
	ctx     context.Context
	cancel  context.CancelFunc
}

// fetchAhead is one statement of a read ahead, in flight.
type fetchAhead struct {
	limit int
	skip  bool // skips the events of the statement before it
	done  chan fetchedAhead
}

type fetchedAhead struct {
	events []Event
	err    error
}

// startReadAhead starts reading the events after from (the end of a full
// batch) on connections of their own while the current batch applies and
// commits, so that catching up reads and commits at the same time. Each
// statement fetches up to readAheadEvents (a whole number of batches), and
// up to two run at once, on two connections: one for the events after the
// last fetched, one for those after its (the same statement, skipping as
// many events as the first fetches). Each is one statement below the safe
// horizon, like the batch's own: the events below one statement's horizon
// are a prefix, in log order, of those below a later one's, so the second
// statement's events follow the first's whenever the first comes back full
// (when it does not, the log has ended for now: the second's are dropped).
// The events they return are the log's next ones whenever they are used.
// Each statement holds a connection of the projectors' budget
// (Config.MaxProjectorConns) and starts only if a slot is free at once:
// with a budget of 1 (the default for pools of up to 7 connections) a lone
// projector does not read ahead, with 2 it reads on one connection.
func (p *Projector) startReadAhead(ctx context.Context, from Position, epoch int64) {
	p.dropReadAheadBuffer()
	ctx, cancel := context.WithCancel(ctx)
	p.ahead = &readAhead{from: from, end: from, epoch: epoch, ctx: ctx, cancel: cancel}
	p.fetchAhead()
}

// fetchAhead starts the read ahead's next statements, while fewer than
// readAheadStatements are in flight, the events held stay within
// readAheadHeld fetches, and the projectors' connection budget has a slot
// free.
func (p *Projector) fetchAhead() {
	a := p.ahead
	limit := max(1, cmp.Or(p.aheadEvents, readAheadEvents)/p.cfg.BatchSize) * p.cfg.BatchSize
	for !a.ended && len(a.fetches) < readAheadStatements && len(a.events)+(len(a.fetches)+1)*limit <= readAheadHeld*limit {
		release, ok := p.store.tryTakeProjectorConn()
		if !ok {
			return
		}
		f := &fetchAhead{limit: limit, skip: len(a.fetches) > 0, done: make(chan fetchedAhead, 1)}
		arg := dbgen.EventListForProjectionSkipParams{
			Types: p.listParams(a.end, limit).Types, AfterTx: a.end.TransactionID, AfterPosition: a.end.GlobalPosition,
			Skip: int32(len(a.fetches) * limit), MaxCount: int32(limit),
		}
		a.fetches = append(a.fetches, f)
		p.reading.Add(1)
		go func(ctx context.Context) {
			defer p.reading.Done()
			defer release()
			events := make([]Event, 0, limit)
			err := p.store.queries.EventListForProjectionSkipEach(ctx, arg, func(r dbgen.ConduitEvent) error {
				events = append(events, eventFromRow(r))
				return nil
			})
			f.done <- fetchedAhead{events, err}
		}(a.ctx)
	}
}

// collectAhead moves the first statement's events into the read ahead's
// buffer: at once if wait is set (returning false if ctx ends first), else
// only if it is done. It returns false if the read ahead was dropped (a
// failed statement, or events that do not follow those before them).
func (p *Projector) collectAhead(ctx context.Context, wait bool) (ok bool) {
	a := p.ahead
	f := a.fetches[0]
	var r fetchedAhead
	if wait {
		select {
		case r = <-f.done:
		case <-ctx.Done():
			p.dropReadAheadBuffer()
			return false
		}
	} else {
		select {
		case r = <-f.done:
		default:
			return true
		}
	}
	if r.err != nil || (len(r.events) > 0 && !a.end.Before(r.events[0].Position)) {
		p.dropReadAheadBuffer()
		return false
	}
	a.fetches = a.fetches[1:]
	a.events = append(a.events, r.events...)
	if f.skip {
		p.aheadSecond.Add(1)
	}
	if len(r.events) > 0 {
		a.end = r.events[len(r.events)-1].Position
	}
	if len(r.events) < f.limit {
		// The log's end, for now: a statement after this one skipped
		// events it did not see. Drop it.
		a.ended = true
		if len(a.fetches) > 0 {
			a.cancel()
			a.fetches = nil
		}
	}
	return true
}

// takeReadAhead returns the next batch's events from the read ahead if it
// starts at checkpoint, the batch's committed checkpoint, under the same
// lease, and holds a whole batch; else (the previous batch stopped short
// of its end: cut by time, a failing event, a rollback; or a rebuild, a new
// lease, a failed read, the log's end) it drops the read ahead, and the
// batch reads its own events.
func (p *Projector) takeReadAhead(ctx context.Context, checkpoint Position, epoch int64) ([]Event, bool) {
	a := p.ahead
	if a == nil {
		return nil, false
	}
	if a.from != checkpoint || a.epoch != epoch {
		p.dropReadAheadBuffer()
		return nil, false
	}
	n := p.cfg.BatchSize
	for len(a.fetches) > 0 {
		if !p.collectAhead(ctx, len(a.events) < n) {
			return nil, false
		}
		if len(a.events) >= n {
			break
		}
	}
	if len(a.events) < n {
		p.dropReadAheadBuffer()
		return nil, false
	}
	events := a.events[:n:n]
	a.events = a.events[n:]
	a.from = events[n-1].Position
	p.aheadUsed.Add(1)
	p.fetchAhead()
	return events, true
}

// dropReadAheadBuffer drops the read ahead, cancelling its statement if one
// is still running.
func (p *Projector) dropReadAheadBuffer() {
	if p.ahead != nil {
		p.ahead.cancel()
		p.ahead = nil
	}
}

// dropReadAhead drops the read ahead and waits for the reads in flight.
func (p *Projector) dropReadAhead() {
	p.dropReadAheadBuffer()
	p.reading.Wait()
}

func (p *Projector) handles(eventType string) bool {
	return p.types == nil || slices.Contains(p.types, eventType)
}

// retryParked re-applies parked events someone asked to retry, each under a
// savepoint: a success removes it from the parked table, a failure parks it
// again with the new error. A handler that overruns HandlerTimeout is parked
// again by the lease keeper, and ends the batch.
func (p *Projector) retryParked(ctx context.Context, tx pgx.Tx, q *dbgen.Queries, run *engine.Batch) error {
	rows, err := q.ParkedEventRetryList(ctx, p.name)
	if err != nil || len(rows) == 0 {
		return err
	}
	for _, r := range rows {
		e := eventFromRow(dbgen.ConduitEvent(r))
		sp, err := tx.Begin(ctx)
		if err != nil {
			return err
		}
		applyErr := p.apply(ctx, sp, e, run, true)
		if applyErr == nil {
			if err := sp.Commit(ctx); err != nil {
				return err
			}
			if err := q.ParkedEventDelete(ctx, dbgen.ParkedEventDeleteParams{Projection: p.name, EventID: e.ID}); err != nil {
				return err
			}
			p.log.Info("conduit: parked event retried and applied", slog.String("event_id", e.ID.String()))
			continue
		}
		var overrun *handlerOverrun
		if errors.As(applyErr, &overrun) {
			return &applyFailure{event: e, err: applyErr}
		}
		if err := sp.Rollback(ctx); err != nil {
			return err
		}
		if databaseFault(applyErr) {
			return applyErr
		}
		if err := p.repark(ctx, q, e, applyErr); err != nil {
			return err
		}
	}
	return nil
}

// repark parks e, a parked event retried in vain, again with err.
func (p *Projector) repark(ctx context.Context, q *dbgen.Queries, e Event, err error) error {
	if err := q.ParkedEventInsert(ctx, dbgen.ParkedEventInsertParams{
		Projection: p.name, EventID: e.ID, TransactionID: e.Position.TransactionID,
		GlobalPosition: e.Position.GlobalPosition, StreamID: e.StreamID, StreamVersion: e.StreamVersion,
		EventType: e.Type, Error: err.Error(), Attempts: 1,
	}); err != nil {
		return err
	}
	p.log.Warn("conduit: parked event failed again", slog.String("event_id", e.ID.String()), slog.Any("error", err))
	return nil
}

// handleFailure deals with a projection error on an event: a database
// problem is returned, to be retried with backoff; the projection's own
// failure (or its handler's overrun of HandlerTimeout) is counted with the
// projection, so the count survives a change of owner, and the event
// retried after a backoff. The next batch commits the events before it,
// then tries it alone, or applies the poison policy once it has failed
// MaxAttempts times.
func (p *Projector) handleFailure(ctx context.Context, f *applyFailure) error {
	var (
		n       int32
		err     error
		overrun *handlerOverrun
	)
	overran := errors.As(f.err, &overrun)
	switch {
	case overran && overrun.parked: // parked again by the keeper
		return overrun.countErr
	case overran: // counted by the keeper
		n, err = overrun.attempts, overrun.countErr
	case databaseFault(f.err):
		return f.err // a database problem, not the event's: retried with backoff
	default:
		n, err = p.countFailure(ctx, p.lease.Epoch(), f.event, f.err)
	}
	if err != nil {
		return err
	}
	p.store.tel.failures.Add(ctx, 1, metric.WithAttributes(attrProjection.String(p.name)))
	attrs := []any{slog.String("event_id", f.event.ID.String()), slog.Int("attempt", int(n)), slog.Any("error", f.err)}
	if int(n) >= p.cfg.MaxAttempts {
		p.log.Warn("conduit: projection failed on event; poison policy applies", attrs...)
		return nil
	}
	wait := p.cfg.retryWait(int(n))
	p.log.Warn("conduit: projection failed on event; retrying", append(attrs, slog.Duration("retry_in", wait))...)
	engine.Idle(ctx, nil, wait)
	return nil
}

// countFailure counts a failed attempt at e with the projection, for epoch's
// lease, and returns the event's failed attempts so far: errLeaseLost if
// the lease is not epoch's (or expired).
func (p *Projector) countFailure(ctx context.Context, epoch int64, e Event, failure error) (int32, error) {
	n, err := p.store.queries.ProjectionFailureCount(ctx, dbgen.ProjectionFailureCountParams{
		EventID: e.ID, Error: failure.Error(), Name: p.name, Owner: p.cfg.InstanceID, Epoch: epoch,
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, errLeaseLost
	}
	if err != nil {
		return 0, fmt.Errorf("count a failed attempt: %w", err)
	}
	return n, nil
}

// retryBackoff is the backoff after failures, of an event or of the
// database: RetryBackoff doubled up to 30 times RetryBackoff, with jitter.
func (c *ProjectorConfig) retryBackoff() *engine.Backoff {
	return engine.NewRetryBackoff(c.RetryBackoff)
}

// retryWait is the wait before trying an event again after its
// attempt-th failure.
func (c *ProjectorConfig) retryWait(attempt int) time.Duration { return c.retryBackoff().Wait(attempt) }

// batchIdleTimeout is how long the server lets a batch's transaction sit
// idle before it ends the session (see HandlerTimeout): a batch takes new
// events for HandlerTimeout/10 at most, each handler runs HandlerTimeout at
// most, and a quarter is left to spare.
func (p *Projector) batchIdleTimeout() time.Duration {
	return p.cfg.HandlerTimeout + p.cfg.HandlerTimeout/4
}
