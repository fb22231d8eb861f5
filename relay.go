package conduit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"go.opentelemetry.io/otel/trace"

	"github.com/conduit-es/conduit/internal/dbgen"
	"github.com/conduit-es/conduit/internal/engine"
)

// Defaults and limits of RelayConfig fields (besides those it shares with
// ProjectorConfig: BatchSize, LeaseDuration, PollInterval, RetryBackoff).
const (
	RelayMaxAttemptsDefault  = 10
	PublishTimeoutDefault    = 30 * time.Second
	PublishTimeoutLimit      = time.Hour
	RowsPerGenerationDefault = 100_000
	RowsPerGenerationLimit   = 100_000_000
	relayRetireEvery         = time.Second
	// relayRetireIdle: how often an idle relay retires all the same. A
	// generation it could not lock (a reader in the way: retiring never
	// waits) stays until a later retire; without deliveries, this one.
	relayRetireIdle = 5 * time.Second
)

// RelayConfig configures a Relay. The zero value means defaults.
type RelayConfig struct {
	// BatchSize is the most messages read and handed to the publisher at
	// once, 1 to BatchSizeLimit. Defaults to BatchSizeDefault (1,000).
	BatchSize int
	// LeaseDuration: as ProjectorConfig.LeaseDuration, for the relay's
	// lease (one relay delivers at a time across processes).
	LeaseDuration time.Duration
	// PublishTimeout bounds one Publish call: its context is cancelled
	// then, and the first message not acknowledged counts a failed attempt,
	// even if the publisher ignores its context. 10ms to
	// PublishTimeoutLimit. Defaults to PublishTimeoutDefault (30s).
	PublishTimeout time.Duration
	// PollInterval: how often the relay looks for messages without being
	// woken. Defaults to PollIntervalDefault.
	PollInterval time.Duration
	// PollOnly turns off LISTEN (see ProjectorConfig.PollOnly).
	PollOnly bool
	// MaxAttempts is how many times a message is published in vain before
	// it becomes a dead letter, 1 to MaxAttemptsLimit. Defaults to
	// RelayMaxAttemptsDefault (10). While a message at the head of the
	// outbox is retried, later messages wait; once it is a dead letter,
	// only the later messages of its key do.
	MaxAttempts int
	// RetryBackoff is the wait before the second attempt at a message,
	// doubled at each further failure up to 30 times it, with jitter (see
	// ProjectorConfig.RetryBackoff). Defaults to RetryBackoffDefault.
	RetryBackoff time.Duration
	// RowsPerGeneration is about how many messages a generation of the
	// outbox holds before the relay makes the next one current; a delivered
	// generation is truncated whole, so the outbox holds about three
	// generations at most while the relay keeps up. 1,000 to
	// RowsPerGenerationLimit. Defaults to RowsPerGenerationDefault.
	RowsPerGeneration int
	// InstanceID names this instance in the lease and the status. Defaults
	// to host-pid-random.
	InstanceID string
	// Logger defaults to the Store's.
	Logger *slog.Logger
}

func (c *RelayConfig) withDefaults(store *Store) (RelayConfig, error) {
	var out RelayConfig
	if c != nil {
		out = *c
	}
	setDefault(&out.BatchSize, BatchSizeDefault)
	setDefault(&out.LeaseDuration, LeaseDurationDefault)
	setDefault(&out.PublishTimeout, PublishTimeoutDefault)
	setDefault(&out.PollInterval, PollIntervalDefault)
	setDefault(&out.MaxAttempts, RelayMaxAttemptsDefault)
	setDefault(&out.RetryBackoff, RetryBackoffDefault)
	setDefault(&out.RowsPerGeneration, RowsPerGenerationDefault)
	const ms = time.Millisecond
	if err := checkRanges(
		countRange("RelayConfig.BatchSize", out.BatchSize, 1, BatchSizeLimit),
		durationRange("RelayConfig.LeaseDuration", out.LeaseDuration, 100*ms, LeaseDurationLimit),
		durationRange("RelayConfig.PublishTimeout", out.PublishTimeout, 10*ms, PublishTimeoutLimit),
		durationRange("RelayConfig.PollInterval", out.PollInterval, ms, PollIntervalLimit),
		countRange("RelayConfig.MaxAttempts", out.MaxAttempts, 1, MaxAttemptsLimit),
		durationRange("RelayConfig.RetryBackoff", out.RetryBackoff, ms, RetryBackoffLimit),
		countRange("RelayConfig.RowsPerGeneration", out.RowsPerGeneration, 1000, RowsPerGenerationLimit),
	); err != nil {
		return out, err
	}
	if out.InstanceID == "" {
		out.InstanceID = defaultInstanceID()
	}
	if err := checkName("RelayConfig.InstanceID", out.InstanceID); err != nil {
		return out, err
	}
	if out.Logger == nil {
		out.Logger = store.cfg.Logger
	}
	return out, nil
}

// Relay delivers the outbox's messages to a Publisher: at least once, and
// in order per key. Run it in as many processes as you like: one instance
// holds the relay's lease and delivers, the others stand by and take over
// within about LeaseDuration of its end. It is the second client of the
// projectors' engine: it reads the outbox in (transaction id, position)
// order below the safe horizon, so a message whose transaction commits
// late is never skipped; it wakes on the same notifications and polls as
// the guarantee; its lease is fenced by an epoch; and publish failures are
// retried with backoff and jitter.
//
// What it promises, precisely:
//   - At least once: a message is recorded as delivered only after the
//     publisher acknowledged it, in a statement fenced by the relay's epoch.
//     A relay that dies (or loses its lease) between publishing and recording
//     leaves the message to be published again, with the same ID: a
//     publisher that hands the ID to the broker (the NATS publisher's
//     Nats-Msg-Id) makes that copy disappear within the broker's
//     de-duplication window. A relay whose process was paused past its
//     lease (SIGSTOP, a frozen VM) after reading a batch does not publish
//     it when it resumes: it checks its lease by its own clock first, so
//     a stale copy cannot reach the broker after its window, behind later
//     messages of its keys (only a pause between that check and the send
//     could still do that).
//   - In order per key: messages are handed to the publisher in the order
//     their transactions committed (enqueue order within one transaction),
//     and a message is handed over only once every earlier message of its
//     key was acknowledged or is a dead letter's held message. A batch stops
//     at its first failure; the rest waits for the retry.
//   - Failures: a message the publisher keeps failing on is retried
//     MaxAttempts times (the messages after it wait meanwhile), then it
//     becomes a dead letter, visible in DeadLetters and
//     conduit.outbox_dead; the later messages of its key are held behind it,
//     and every other key flows. An error matching ErrBrokerUnavailable
//     counts no attempt: it is retried with backoff while the outage lasts.
//     RetryDeadLetter delivers it again, then the
//     held ones, in order; DiscardDeadLetter drops it and delivers the held
//     ones. A message with an empty key holds back nothing.
type Relay struct {
	store   *Store
	pub     Publisher
	cfg     RelayConfig
	log     *slog.Logger
	lease   *engine.Lease
	running atomic.Bool

	// Owned by the goroutine in Run or Drain.
	deadDue time.Time // when to look at the dead-letter table again after a failure there
	// unavailable paces the retries while the broker is unavailable
	// (ErrBrokerUnavailable): reset by a successful publish.
	unavailable *engine.Backoff
	lastRetire  time.Time
	retireDue   bool  // something was delivered, or generations switched, since the last retire
	generation  int16 // the current generation at the last retire, -1 before
	// state is the relay row as this instance last wrote it under its
	// lease (only the lease holder writes it), nil when unknown: read
	// again after acquiring, or after any error.
	state      *dbgen.OutboxRelayStateRow
	stateEpoch int64
	// next is the batch after the current one, read while the current one
	// is published (nil: none).
	next *prefetch
	// heldDue is when to look at the dead-letter table for held messages
	// to deliver again (see deliverHeld).
	heldDue time.Time
	// reading counts the reads ahead in flight, waited for when Run ends.
	reading sync.WaitGroup
	// saving is the save of the previous batch, in flight while this one
	// is published (nil: none); see settle.
	saving chan error
	// head is where Drain stops (nil in Run): the batch that reaches it is
	// saved before Drain returns.
	head *Position
	// pages are the read buffers not in use: a batch's rows are read into
	// one, the batch after it into another while it is published, and each
	// goes back once its batch is done (see dbgen.OutboxPage). Taken and
	// given back by the goroutine in Run or Drain only (a read ahead's page
	// is taken before its goroutine starts).
	pages []*dbgen.OutboxPage
	index []int // batch's, kept for the next batch
}

// NewRelay returns a relay of store's outbox to pub. It does not touch the
// database. A nil cfg means defaults.
func NewRelay(store *Store, pub Publisher, cfg *RelayConfig) (*Relay, error) {
	if store == nil || pub == nil {
		return nil, errors.New("conduit: NewRelay: nil store or publisher")
	}
	c, err := cfg.withDefaults(store)
	if err != nil {
		return nil, err
	}
	r := &Relay{store: store, pub: pub, cfg: c, retireDue: true, generation: -1,
		unavailable: engine.NewRetryBackoff(c.RetryBackoff),
		log:         c.Logger.With(slog.String("relay", "outbox"), slog.String("instance", c.InstanceID))}
	q := store.queries
	r.lease = engine.NewLease(engine.LeaseConfig{
		Duration:    c.LeaseDuration,
		CallTimeout: c.PublishTimeout,
		Acquire: func(ctx context.Context) (int64, error) {
			return q.OutboxRelayAcquire(ctx, dbgen.OutboxRelayAcquireParams{Owner: c.InstanceID, LeaseSeconds: c.LeaseDuration.Seconds()})
		},
		Renew: func(ctx context.Context, epoch int64, _ *engine.Call) error {
			_, err := q.OutboxRelayRenew(ctx, dbgen.OutboxRelayRenewParams{LeaseSeconds: c.LeaseDuration.Seconds(), Owner: c.InstanceID, Epoch: epoch})
			return err
		},
		Release: func(ctx context.Context, epoch int64) error {
			return q.OutboxRelayRelease(ctx, dbgen.OutboxRelayReleaseParams{Owner: c.InstanceID, Epoch: epoch})
		},
		Overrun: func(_ context.Context, _ int64, call *engine.Call) error {
			err := fmt.Errorf("%w (%s)", errPublishTimeout, c.PublishTimeout)
			call.Batch.Cancel(err)
			return err
		},
		Log:      r.log,
		OnChange: func(change string) { store.tel.leaseChange("relay", "outbox", change) },
	})
	return r, nil
}

// errPublishTimeout is the failure of a Publish call that overran
// PublishTimeout.
var errPublishTimeout = errors.New("publish ran longer than RelayConfig.PublishTimeout")

// InstanceID returns the name this instance holds the lease under.
func (r *Relay) InstanceID() string { return r.cfg.InstanceID }

// Run delivers messages until ctx ends, then releases the lease and returns
// nil. Database and publish errors are retried with backoff; Run returns
// early only on a database restored from a logical dump
// (ErrRestoredDatabase: run SELECT conduit.rebase_transaction_ids()). A Relay runs
// once at a time (Run or Drain); for several instances in one process make
// several Relays.
func (r *Relay) Run(ctx context.Context) error { return r.run(ctx, nil) }

// Drain delivers every message committed before the call, then releases
// the lease and returns nil: for tests, scripts and shutdown hooks. A
// message that becomes a dead letter counts as passed. If another instance
// holds the lease, Drain waits for it to pass them (and takes over if its
// lease expires). It returns ctx's error if ctx ends first.
func (r *Relay) Drain(ctx context.Context) error {
	row, err := r.store.queries.OutboxHead(ctx)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return r.store.dbError(ctx, err, "outbox head")
	}
	head := Position{TransactionID: row.TransactionID, GlobalPosition: row.Position}
	return r.run(ctx, &head)
}

type relayResult struct {
	checkpoint Position
	caughtUp   bool // read fewer messages than BatchSize
	more       bool // messages follow the checkpoint (maybe behind the horizon)
	// retryIn is set when a publish failed and the message is retried.
	retryIn time.Duration
}

func (r *Relay) run(ctx context.Context, head *Position) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("conduit: Relay already running (Run or Drain); make one Relay per concurrent instance")
	}
	defer r.running.Store(false)
	defer func() { r.next = nil; r.reading.Wait() }()
	r.head = head
	horizonWaitMax := r.cfg.PollInterval
	if head != nil {
		horizonWaitMax = min(horizonWaitMax, waitPollMax)
	} else if !r.cfg.PollOnly {
		r.store.listener.Acquire()
		defer r.store.listener.Release()
	}
	defer r.lease.Release()
	defer func() { _ = r.settle() }() // before the release

	behindHorizon := engine.NewBackoff(time.Millisecond, horizonWaitMax)
	failures := engine.NewRetryBackoff(r.cfg.RetryBackoff)
	standby := engine.NewBackoff(time.Millisecond, waitPollMax)
	for ctx.Err() == nil {
		wake := r.store.appended.Wait() // taken before reading: no wake-up is lost
		res, err := r.step(ctx)
		switch {
		case err == nil:
			failures.Reset()
			switch {
			case head != nil && !res.checkpoint.Before(*head):
				return nil
			case res.retryIn > 0:
				engine.Idle(ctx, nil, res.retryIn)
			case res.caughtUp && res.more:
				engine.Idle(ctx, wake, behindHorizon.Next())
			case res.caughtUp:
				behindHorizon.Reset()
				engine.Idle(ctx, wake, r.cfg.PollInterval)
			default:
				behindHorizon.Reset()
			}
		case ctx.Err() != nil:
		case errors.Is(err, ErrRestoredDatabase):
			r.log.Error("conduit: relay refuses to run", slog.Any("error", err))
			return err
		case errors.Is(err, errLeaseLost):
			r.lease.Lose()
		case errors.Is(err, errStandby) && head != nil:
			st, err := r.store.OutboxStatus(ctx)
			if err == nil && !st.Checkpoint.Before(*head) {
				return nil
			}
			engine.Idle(ctx, wake, standby.Next())
		case errors.Is(err, errStandby):
			engine.Idle(ctx, wake, min(r.cfg.PollInterval, r.cfg.LeaseDuration/3))
		default:
			wait := failures.Next()
			r.log.Warn("conduit: relay error; retrying", slog.Any("error", poolerHint(err)), slog.Duration("retry_in", wait))
			engine.Idle(ctx, nil, wait)
		}
	}
	if head != nil {
		return fmt.Errorf("conduit: drain the outbox to %s: %w", *head, ctx.Err())
	}
	return nil
}

// step takes the lease if needed, delivers what the dead-letter table has
// to deliver, then one batch of the outbox.
func (r *Relay) step(ctx context.Context) (relayResult, error) {
	acquired, err := r.lease.Acquire(ctx)
	if err != nil {
		if errors.Is(err, errStandby) {
			return relayResult{}, err
		}
		return relayResult{}, fmt.Errorf("acquire the relay's lease: %w", err)
	}
	if acquired {
		// A database restored from a logical dump holds transaction ids
		// above the new cluster's: nothing would ever be below the horizon.
		c, err := r.store.queries.OutboxTransactionIDsCheck(ctx)
		if err == nil && !c.Ok {
			err = &RestoredDatabaseError{MaxStored: c.MaxStored, NextTransactionID: c.NextXid}
		}
		if err != nil {
			r.lease.Release()
			return relayResult{}, err
		}
	}
	if acquired {
		r.heldDue = time.Time{}
		_ = r.settle() // a save under an earlier epoch: refused, or read back below
	}
	if now := time.Now(); !now.Before(r.deadDue) && !now.Before(r.heldDue) {
		if err := r.settle(); err != nil {
			r.state, r.next = nil, nil
			return relayResult{}, err
		}
		if err := r.deliverHeld(ctx); err != nil {
			r.state = nil
			return relayResult{}, err
		}
	}
	res, err := r.batch(ctx)
	if err != nil {
		r.state, r.next = nil, nil
		return res, err
	}
	if since := time.Since(r.lastRetire); since >= relayRetireIdle || (r.retireDue && since >= relayRetireEvery) {
		r.retire(ctx)
	}
	return res, nil
}

// publish hands msgs to the publisher under the lease keeper's watch, for
// at most PublishTimeout.
func (r *Relay) publish(ctx context.Context, msgs []Message) (int, error) {
	if !r.lease.Held() {
		// The process was paused (or starved) past the lease since it read
		// msgs: another instance may have delivered them, and later ones of
		// their keys. Sent now, once the broker's de-duplication window is
		// over, they would be stored again, after those.
		r.log.Warn("conduit: relay's lease ran out before publishing; the batch is left to the lease's holder",
			slog.Int("messages", len(msgs)))
		return 0, errLeaseLost
	}
	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		n    int
		perr error
	)
	call := &engine.Call{Start: time.Now(), Batch: &engine.Batch{Cancel: cancel}}
	err := r.lease.Watch(call, func() error {
		n, perr = r.pub.Publish(bctx, msgs)
		return nil
	})
	n = min(max(n, 0), len(msgs))
	switch {
	case err != nil: // overran PublishTimeout
		if n == len(msgs) {
			return n, nil
		}
		return n, err
	case errors.Is(context.Cause(bctx), errLeaseLost):
		return n, errLeaseLost
	case n < len(msgs) && perr == nil:
		return n, fmt.Errorf("publisher acknowledged %d of %d messages without an error", n, len(msgs))
	case n == len(msgs):
		return n, nil
	}
	return n, perr
}

// batch delivers the next messages after the checkpoint.
func (r *Relay) batch(ctx context.Context) (relayResult, error) {
	q := r.store.queries
	epoch := r.lease.Epoch()
	if r.state == nil || r.stateEpoch != epoch {
		_ = r.settle() // read below what it wrote, if anything
		st, err := q.OutboxRelayState(ctx, dbgen.OutboxRelayStateParams{Owner: r.cfg.InstanceID, Epoch: epoch})
		if errors.Is(err, pgx.ErrNoRows) {
			return relayResult{}, errLeaseLost
		}
		if err != nil {
			return relayResult{}, err
		}
		r.state, r.stateEpoch, r.next = &st, epoch, nil
	}
	st := *r.state
	res := relayResult{checkpoint: Position{TransactionID: st.CheckpointTx, GlobalPosition: st.CheckpointPosition}}
	rows, page, err := r.read(ctx, res.checkpoint)
	if err != nil {
		return res, err
	}
	defer r.putPage(page) // rows are not used after the batch
	res.caughtUp = len(rows) < r.cfg.BatchSize
	if !res.caughtUp {
		// Read the batch after this one while this one is published.
		r.next = r.prefetch(ctx, Position{TransactionID: rows[len(rows)-1].TransactionID, GlobalPosition: rows[len(rows)-1].Position})
	}
	if len(rows) == 0 {
		res.more, err = q.OutboxAfter(ctx, dbgen.OutboxAfterParams{AfterTx: st.CheckpointTx, AfterPosition: st.CheckpointPosition})
		return res, err
	}
	msgs := make([]Message, 0, len(rows)) // handed to the publisher: never reused
	index := r.index[:0]                  // msgs[i] is rows[index[i]]
	defer func() { r.index = index }()
	for i, row := range rows {
		if row.Blocked {
			continue
		}
		m, err := messageFromRow(row.TransactionID, row.Position, row.MessageID, row.Topic, row.Key, row.Payload, row.Headers, row.CreatedAt)
		if err != nil {
			return res, err
		}
		msgs = append(msgs, m)
		index = append(index, i)
	}
	delivered, perr := 0, error(nil)
	if len(msgs) > 0 {
		pctx, span := r.store.tel.tracer.Start(ctx, "conduit.relay.publish", trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(attrMessages.Int(len(msgs))), trace.WithLinks(r.store.tel.messageLinks(msgs)...))
		delivered, perr = r.publish(pctx, msgs)
		endSpan(span, perr)
		r.store.tel.delivered.Add(ctx, int64(delivered))
	}
	if errors.Is(perr, errLeaseLost) {
		return res, perr
	}
	// What was acknowledged is recorded even if ctx ends meanwhile (a
	// shutdown): the save goes out on a context of its own. Shutting down
	// during the publish, the rest is published by whoever runs next, and
	// no attempt counts.
	stopping := ctx.Err() != nil
	ctx, cancelSave := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancelSave()
	end := len(rows) // rows[:end] are passed
	save := dbgen.OutboxRelaySaveParams{
		Delivered: int64(delivered), LeaseSeconds: r.cfg.LeaseDuration.Seconds(),
		Owner: r.cfg.InstanceID, Epoch: epoch,
	}
	if perr == nil {
		r.unavailable.Reset()
	}
	if perr != nil {
		failed := rows[index[delivered]]
		attempts := int32(1)
		if st.FailingMessageID == failed.MessageID {
			attempts = st.FailedAttempts + 1
		}
		res.caughtUp = false
		unavailable := errors.Is(perr, ErrBrokerUnavailable)
		if unavailable || stopping {
			attempts-- // not the message's fault: no attempt counted
		}
		switch {
		case stopping:
			end = index[delivered]
			save.FailingMessageID = uuid.NullUUID{UUID: st.FailingMessageID, Valid: st.FailingMessageID != uuid.Nil}
			save.FailedAttempts = st.FailedAttempts
		case unavailable:
			end = index[delivered]
			save.FailingMessageID = uuid.NullUUID{UUID: failed.MessageID, Valid: true}
			save.FailedAttempts = attempts
			save.LastError = pgtype.Text{String: perr.Error(), Valid: true}
			res.retryIn = r.unavailable.Next()
			r.log.Warn("conduit: broker unavailable; retrying", slog.Any("error", perr), slog.Duration("retry_in", res.retryIn))
		case int(attempts) >= r.cfg.MaxAttempts:
			end = index[delivered] + 1
			save.DeadTx, save.DeadPosition = failed.TransactionID, failed.Position
			save.DeadAttempts, save.DeadError = attempts, perr.Error()
			save.MoveTx = append(save.MoveTx, strconv.FormatUint(failed.TransactionID, 10))
			save.MovePosition = append(save.MovePosition, failed.Position)
			r.store.tel.deadLetters.Add(ctx, 1)
			r.log.Error("conduit: message dead-lettered", slog.String("message_id", failed.MessageID.String()),
				slog.String("topic", failed.Topic), slog.String("key", failed.Key),
				slog.Int("attempts", int(attempts)), slog.Any("error", perr))
		default:
			end = index[delivered]
			save.FailingMessageID = uuid.NullUUID{UUID: failed.MessageID, Valid: true}
			save.FailedAttempts = attempts
			save.LastError = pgtype.Text{String: perr.Error(), Valid: true}
			res.retryIn = engine.NewRetryBackoff(r.cfg.RetryBackoff).Wait(int(attempts))
			r.log.Warn("conduit: publish failed; retrying", slog.String("message_id", failed.MessageID.String()),
				slog.Int("attempt", int(attempts)), slog.Any("error", perr), slog.Duration("retry_in", res.retryIn))
		}
	}
	for _, row := range rows[:end] {
		if row.Blocked {
			save.MoveTx = append(save.MoveTx, strconv.FormatUint(row.TransactionID, 10))
			save.MovePosition = append(save.MovePosition, row.Position)
		}
	}
	cp := res.checkpoint
	if end > 0 {
		cp = Position{TransactionID: rows[end-1].TransactionID, GlobalPosition: rows[end-1].Position}
	}
	save.CheckpointTx, save.CheckpointPosition = cp.TransactionID, cp.GlobalPosition
	if save.MoveTx == nil {
		save.MoveTx, save.MovePosition = []string{}, []int64{}
	}
	if perr != nil || len(save.MoveTx) > 0 {
		// The batch read ahead may start elsewhere, or see a key as free
		// that this save is about to hold back: read again.
		r.next = nil
	}
	if len(save.MoveTx) > 0 {
		r.heldDue = time.Time{}
	}
	// The previous batch's save, in flight while this batch was published,
	// lands first: saves are made in order.
	if err := r.settle(); err != nil {
		return res, err
	}
	newState := &dbgen.OutboxRelayStateRow{CheckpointTx: cp.TransactionID, CheckpointPosition: cp.GlobalPosition,
		FailingMessageID: save.FailingMessageID.UUID, FailedAttempts: save.FailedAttempts}
	if delivered > 0 || end > 0 {
		r.retireDue = true
	}
	if perr == nil && len(save.MoveTx) == 0 && !res.caughtUp && !stopping && (r.head == nil || cp.Before(*r.head)) {
		// A full batch went out cleanly and more follows: its save goes on
		// while the next batch is published (see settle).
		r.saveAhead(ctx, save)
		r.state = newState
		res.checkpoint, res.more = cp, true
		return res, nil
	}
	out, err := q.OutboxRelaySave(ctx, save)
	if err != nil {
		return res, err
	}
	if !out.Ok {
		return res, errLeaseLost
	}
	r.state = newState
	res.checkpoint, res.more = cp, out.More
	return res, nil
}

// saveAhead starts save on a connection of its own; settle waits for it.
//
// Publishing the next batch before this save is known to have landed is as
// safe as publishing this one was: the relay publishes only while it holds
// the lease by its own clock (Relay.publish), and a save that finds the
// lease taken writes nothing. If it fails, the checkpoint stays before this
// batch: the batch and the next one, already published, are published again
// (with the same IDs) by whoever delivers next, in the same order, which is
// what at least once allows; the copies go back no further than these two
// batches.
func (r *Relay) saveAhead(ctx context.Context, save dbgen.OutboxRelaySaveParams) {
	done := make(chan error, 1)
	r.saving = done
	ctx = context.WithoutCancel(ctx) // recorded even if the relay is stopping
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		out, err := r.store.queries.OutboxRelaySave(ctx, save)
		if err == nil && !out.Ok {
			err = errLeaseLost
		}
		done <- err
	}()
}

// settle waits for the save started by saveAhead, if any, and returns its
// error (errLeaseLost if the lease was gone). After an error the relay's
// state is read again from the database.
func (r *Relay) settle() error {
	if r.saving == nil {
		return nil
	}
	err := <-r.saving
	r.saving = nil
	if err != nil {
		r.state, r.next = nil, nil
	}
	return err
}

// deliverHeld delivers the messages of conduit.outbox_dead that may go: the
// held messages of keys whose dead letter was retried or discarded.
func (r *Relay) deliverHeld(ctx context.Context) error {
	q := r.store.queries
	rows, err := q.OutboxDeadDeliverable(ctx, int32(r.cfg.BatchSize))
	if err != nil {
		return err
	}
	if len(rows) == 0 {
		// Nothing to deliver again: look once a PollInterval (a retry or a
		// discard from elsewhere), or after this relay holds messages back.
		r.heldDue = time.Now().Add(r.cfg.PollInterval)
		return nil
	}
	msgs := make([]Message, len(rows))
	for i, row := range rows {
		if msgs[i], err = messageFromRow(row.TransactionID, row.Position, row.MessageID, row.Topic, row.Key, row.Payload, row.Headers, row.CreatedAt); err != nil {
			return err
		}
	}
	n, perr := r.publish(ctx, msgs)
	r.store.tel.delivered.Add(ctx, int64(n))
	if errors.Is(perr, errLeaseLost) {
		return perr
	}
	if ctx.Err() != nil && perr != nil { // shutting down: count nothing
		perr = fmt.Errorf("%w: %w", ErrBrokerUnavailable, perr)
	}
	// What was acknowledged is recorded even if ctx ends meanwhile.
	ctx, cancelSave := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancelSave()
	unavailable := errors.Is(perr, ErrBrokerUnavailable)
	save := dbgen.OutboxDeadSaveParams{Owner: r.cfg.InstanceID, Epoch: r.lease.Epoch(),
		DeliveredTx: make([]string, n), DeliveredPosition: make([]int64, n), MaxAttempts: int32(r.cfg.MaxAttempts)}
	for i, row := range rows[:n] {
		save.DeliveredTx[i], save.DeliveredPosition[i] = strconv.FormatUint(row.TransactionID, 10), row.Position
	}
	if perr != nil && !unavailable {
		save.FailedTx, save.FailedPosition, save.Error = rows[n].TransactionID, rows[n].Position, perr.Error()
	}
	out, err := q.OutboxDeadSave(ctx, save)
	if err != nil {
		return err
	}
	if !out.Ok {
		return errLeaseLost
	}
	switch {
	case unavailable:
		r.deadDue = time.Now().Add(r.unavailable.Next())
	case perr != nil:
		wait := engine.NewRetryBackoff(r.cfg.RetryBackoff).Wait(int(out.Attempts))
		r.deadDue = time.Now().Add(wait)
		r.log.Warn("conduit: publish of a retried dead letter failed", slog.String("message_id", rows[n].MessageID.String()),
			slog.Int("attempt", int(out.Attempts)), slog.Any("error", perr), slog.Duration("retry_in", wait))
	}
	if n > 0 {
		r.retireDue = true
	}
	return nil
}

// retire truncates delivered generations and switches generations (see
// conduit.outbox_retire). It never waits for a lock; a failure is logged
// and tried again later.
func (r *Relay) retire(ctx context.Context) {
	r.lastRetire = time.Now()
	out, err := r.store.queries.OutboxRetire(ctx, int64(r.cfg.RowsPerGeneration))
	if err != nil {
		r.log.Warn("conduit: retiring outbox generations failed; tried again later", slog.Any("error", err))
		return
	}
	// A switch leaves the previous generation to truncate at the next call,
	// once delivered: due even if nothing more is delivered meanwhile. (The
	// first call, not knowing the generation before, is followed by one more.)
	r.retireDue = out.Current != r.generation
	r.generation = out.Current
	if len(out.Truncated) > 0 {
		r.log.Debug("conduit: outbox generations truncated", slog.Any("generations", out.Truncated), slog.Int("current", int(out.Current)))
	}
}

// prefetch is a batch being read ahead, after from.
type prefetch struct {
	from Position
	done chan prefetched
}

type prefetched struct {
	rows []dbgen.OutboxListForRelayRow
	page *dbgen.OutboxPage
	err  error
}

// prefetch starts reading the batch after from, on a connection of its
// own, while the current batch is published.
func (r *Relay) prefetch(ctx context.Context, from Position) *prefetch {
	p := &prefetch{from: from, done: make(chan prefetched, 1)}
	page := r.getPage()
	r.reading.Add(1)
	go func() {
		defer r.reading.Done()
		rows, err := r.list(ctx, from, page)
		p.done <- prefetched{rows, page, err}
	}()
	return p
}

// read returns the batch after cp, and the page holding it: the one read
// ahead if it starts there, else one read now. (A batch read ahead that is
// not taken keeps its page: it is left to the garbage collector.)
func (r *Relay) read(ctx context.Context, cp Position) ([]dbgen.OutboxListForRelayRow, *dbgen.OutboxPage, error) {
	if next := r.next; next != nil {
		r.next = nil
		if next.from == cp {
			got := <-next.done
			if got.err == nil {
				return got.rows, got.page, nil
			}
			r.putPage(got.page)
		}
	}
	page := r.getPage()
	rows, err := r.list(ctx, cp, page)
	if err != nil {
		r.putPage(page)
		return nil, nil, err
	}
	return rows, page, nil
}

func (r *Relay) list(ctx context.Context, after Position, page *dbgen.OutboxPage) ([]dbgen.OutboxListForRelayRow, error) {
	return r.store.queries.OutboxListForRelayInto(ctx, dbgen.OutboxListForRelayParams{
		AfterTx: after.TransactionID, AfterPosition: after.GlobalPosition, MaxCount: int32(r.cfg.BatchSize),
	}, page)
}

// getPage returns a read buffer not in use.
func (r *Relay) getPage() *dbgen.OutboxPage {
	if n := len(r.pages); n > 0 {
		p := r.pages[n-1]
		r.pages = r.pages[:n-1]
		return p
	}
	return &dbgen.OutboxPage{}
}

// putPage gives back a read buffer whose rows are no longer used, cleared
// (it holds none of their texts and payloads while it waits).
func (r *Relay) putPage(p *dbgen.OutboxPage) {
	p.Release()
	if len(r.pages) < 2 {
		r.pages = append(r.pages, p)
	}
}
