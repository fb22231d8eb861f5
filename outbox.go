package conduit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit/internal/dberr"
	"github.com/conduit-es/conduit/internal/dbgen"
)

// Message is a message of the outbox: written in the same transaction as
// events, then delivered at least once, in order per key, by a Relay to a
// Publisher.
type Message struct {
	// ID identifies the message for de-duplication downstream: a publisher
	// hands it to the broker (the NATS publisher as Nats-Msg-Id), so that a
	// message delivered again after a crash reaches a consumer once.
	// NewMessage assigns a UUIDv7; an enqueue refuses a zero ID.
	ID uuid.UUID
	// Topic says where the message goes (for the NATS publisher, the
	// subject). 1 to 255 bytes.
	Topic string
	// Key orders messages: a key's messages are delivered in the order their
	// transactions committed (for messages of one transaction, in the order
	// they were enqueued), and a dead letter holds back the later messages of
	// its key only. (Enqueues and appends hold the key's lock until their
	// transaction ends; see EnqueueTx for the one refusal that keeps this
	// order. Rows inserted into conduit.outbox by hand are delivered in
	// transaction id order.) An empty key puts the message in no key's order: it
	// waits for no other message, and none waits for it. At most 1024
	// bytes.
	Key string
	// Payload is the message's body, any bytes.
	Payload []byte
	// Headers are sent with the message (for the NATS publisher, as NATS
	// headers).
	Headers map[string]string

	// Set on messages read from the outbox.

	// Position is the message's place in the outbox, in the order of the
	// global log: (transaction id, position).
	Position Position
	// CreatedAt is when the message was enqueued (the database's clock).
	CreatedAt time.Time
}

// NewMessage returns a message with a fresh UUIDv7 as its ID. Make the
// message once and enqueue that value on every retry of its transaction.
func NewMessage(topic, key string, payload []byte) Message {
	return Message{ID: uuid.Must(uuid.NewV7()), Topic: topic, Key: key, Payload: payload}
}

// Publisher delivers outbox messages to a broker. A Relay calls Publish
// from one goroutine at a time, with up to RelayConfig.BatchSize messages in
// outbox order.
//
// Publish returns how many of msgs, counted from the first, the broker has
// acknowledged; when that is fewer than len(msgs), err says why the next one
// was not. Messages after the acknowledged ones may have reached the broker
// too (a lost acknowledgement): the relay publishes them again, with the
// same IDs, which is why publishers hand the ID to the broker for
// de-duplication. A publisher that pipelines a batch must keep a key's
// messages in order at the broker; see Relay for what a relay promises.
//
// An error that wraps (or matches, with errors.Is) ErrBrokerUnavailable
// says the broker could not be reached or did not answer in time, not
// that it refused the message: the relay retries it with backoff for as
// long as it takes, without counting an attempt, so an outage never turns
// messages into dead letters. Any other error counts a failed attempt of
// the message (see RelayConfig.MaxAttempts).
type Publisher interface {
	Publish(ctx context.Context, msgs []Message) (int, error)
}

// ErrBrokerUnavailable is what a Publisher's error matches when the broker
// could not be reached, or did not acknowledge in time (see Publisher).
var ErrBrokerUnavailable = errors.New("conduit: broker unavailable")

// PublishFunc adapts a function that publishes one message to a Publisher:
// it publishes a batch one message at a time, in order, and stops at the
// first error, or when ctx ends.
type PublishFunc func(ctx context.Context, m Message) error

// Publish calls f on each message in turn until one fails.
func (f PublishFunc) Publish(ctx context.Context, msgs []Message) (int, error) {
	for i, m := range msgs {
		if err := ctx.Err(); err != nil {
			return i, err
		}
		if err := f(ctx, m); err != nil {
			return i, err
		}
	}
	return len(msgs), nil
}

// Limits of a Message, checked before anything is sent.
const (
	MaxTopicLength = 255  // bytes
	MaxKeyLength   = 1024 // bytes
)

// OutboxRule maps the events of one type to outbox messages, enqueued in the
// append's own statement (one round trip, the same transaction): an append
// that rolls back, or is refused, enqueues nothing, and an idempotent retry
// of an append enqueues nothing again. Set rules in Config.Outbox; they
// apply to Append, AppendTx and Entity updates alike. An append takes its
// messages' keys' locks with its stream's, so a message keyed by something
// else than its stream keeps its key's order of commits too; in AppendTx
// the messages are enqueued as EnqueueTx enqueues, and a refusal
// (ErrTransactionOrder) aborts the transaction, whose events must not
// commit without them.
type OutboxRule struct {
	// EventType is the type of the events the rule maps. One rule per type.
	EventType string
	// Topic is the messages' topic when Message is nil.
	Topic string
	// Message makes the message for e. It is called before the append is
	// sent, so e has its ID, StreamID, Type, Data and Metadata but not yet
	// its StreamVersion, Position or RecordedAt. A zero ID in the returned
	// message becomes the event's ID (so a resent append yields the same
	// message ID, and JetStream drops the copy); an empty Topic becomes the
	// rule's. An error refuses the append. When nil, the message is the
	// event: ID the event's, the rule's Topic, key the stream ID (a stream's
	// messages in order), payload the event's data, and headers
	// Conduit-Event-Type and Conduit-Stream.
	Message func(e Event) (Message, error)
}

// message makes e's message under the rule.
func (r *OutboxRule) message(e Event) (Message, error) {
	if r.Message == nil {
		return Message{ID: e.ID, Topic: r.Topic, Key: e.StreamID, Payload: e.Data,
			Headers: map[string]string{"Conduit-Event-Type": e.Type, "Conduit-Stream": e.StreamID}}, nil
	}
	m, err := r.Message(e)
	if err != nil {
		return Message{}, err
	}
	if m.ID == uuid.Nil {
		m.ID = e.ID
	}
	if m.Topic == "" {
		m.Topic = r.Topic
	}
	return m, nil
}

// checkOutboxRules checks Config.Outbox and indexes it by event type.
func checkOutboxRules(rules []OutboxRule) (map[string]*OutboxRule, error) {
	if len(rules) == 0 {
		return nil, nil
	}
	byType := make(map[string]*OutboxRule, len(rules))
	for i := range rules {
		r := &rules[i]
		field := fmt.Sprintf("Config.Outbox[%d]", i)
		if err := checkName(field+".EventType", r.EventType); err != nil {
			return nil, err
		}
		if byType[r.EventType] != nil {
			return nil, &ConfigError{Field: field, Reason: fmt.Sprintf("event type %q has a rule already", r.EventType)}
		}
		if r.Message == nil && r.Topic == "" {
			return nil, &ConfigError{Field: field, Reason: "neither Topic nor Message"}
		}
		byType[r.EventType] = r
	}
	return byType, nil
}

// outboxArgs are messages as the enqueue statements' arrays.
type outboxArgs struct {
	ids, topics, keys, headers []string
	payloads                   [][]byte
}

func (a *outboxArgs) len() int { return len(a.ids) }

// add validates m (the i-th message) and adds it.
func (a *outboxArgs) add(i int, m *Message, maxSize int) error {
	switch {
	case m.ID == uuid.Nil:
		return &ValidationError{Field: "message id", Index: i, Reason: "zero; use NewMessage"}
	case m.Topic == "":
		return &ValidationError{Field: "message topic", Index: i, Reason: "empty"}
	case len(m.Topic) > MaxTopicLength:
		return &ValidationError{Field: "message topic", Index: i, Reason: fmt.Sprintf("%d bytes, limit %d", len(m.Topic), MaxTopicLength)}
	case !utf8.ValidString(m.Topic) || containsNUL(m.Topic):
		return &ValidationError{Field: "message topic", Index: i, Reason: "not valid UTF-8 text"}
	case len(m.Key) > MaxKeyLength:
		return &ValidationError{Field: "message key", Index: i, Reason: fmt.Sprintf("%d bytes, limit %d", len(m.Key), MaxKeyLength)}
	case !utf8.ValidString(m.Key) || containsNUL(m.Key):
		return &ValidationError{Field: "message key", Index: i, Reason: "not valid UTF-8 text"}
	case len(m.Payload) > maxSize:
		return &ValidationError{Field: "message payload", Index: i, Err: ErrEventTooLarge,
			Reason: fmt.Sprintf("%d bytes, limit %d (Config.MaxEventSize)", len(m.Payload), maxSize)}
	}
	headers := ""
	if len(m.Headers) > 0 {
		b, err := json.Marshal(m.Headers)
		if err != nil {
			return &ValidationError{Field: "message headers", Index: i, Reason: err.Error()}
		}
		headers = string(b)
	}
	payload := m.Payload
	if payload == nil {
		payload = []byte{}
	}
	a.ids = append(a.ids, m.ID.String())
	a.topics = append(a.topics, m.Topic)
	a.keys = append(a.keys, m.Key)
	a.payloads = append(a.payloads, payload)
	a.headers = append(a.headers, headers)
	return nil
}

// newOutboxArgs validates msgs.
func (s *Store) newOutboxArgs(ctx context.Context, msgs []Message) (outboxArgs, error) {
	var a outboxArgs
	if len(msgs) == 0 {
		return a, &ValidationError{Field: "messages", Index: -1, Reason: "none given"}
	}
	if len(msgs) > MaxEventsPerAppend {
		return a, &ValidationError{Field: "messages", Index: -1, Err: ErrAppendTooLarge,
			Reason: fmt.Sprintf("%d messages, limit %d per call", len(msgs), MaxEventsPerAppend)}
	}
	total := 0
	tp := s.tel.traceparent(ctx) // a header: the relay's span links back
	for i := range msgs {
		total += len(msgs[i].Payload)
		m := msgs[i]
		if tp != "" && m.Headers[TraceparentKey] == "" {
			m.Headers = maps.Clone(m.Headers)
			if m.Headers == nil {
				m.Headers = map[string]string{}
			}
			m.Headers[TraceparentKey] = tp
		}
		if err := a.add(i, &m, s.cfg.MaxEventSize); err != nil {
			return a, err
		}
	}
	if total > s.cfg.MaxAppendSize {
		return a, &ValidationError{Field: "messages", Index: -1, Err: ErrAppendTooLarge,
			Reason: fmt.Sprintf("payloads are %d bytes in all, limit %d per call (Config.MaxAppendSize)", total, s.cfg.MaxAppendSize)}
	}
	return a, nil
}

func (a *outboxArgs) params() dbgen.OutboxEnqueueParams {
	return dbgen.OutboxEnqueueParams{MessageIds: a.ids, Topics: a.topics, Keys: a.keys, Payloads: a.payloads, Headers: a.headers}
}

// EnqueueTx writes msgs to the outbox in tx: they are delivered if and only
// if tx commits, in the order given among themselves. Like AppendTx it
// cannot know when tx commits, so it wakes no relay: call Notify after the
// commit, or use InTx (relays also poll).
//
// Message IDs are not checked for uniqueness: the broker de-duplicates by
// ID (within JetStream's duplicate window), so enqueue each message once
// per commit, and make its ID once (NewMessage) and reuse it on a retry.
//
// Each key's lock (the lock an append takes on a stream of that name) is
// held until tx ends, so transactions that enqueue to one key go one after
// the other. In a transaction that wrote before (its id, the relay's order,
// was given then), an enqueue to a key that a younger transaction enqueued
// to and committed meanwhile is refused: its message would be delivered
// before that one's, though it commits after it.
//
// Errors: *ValidationError (ErrInvalidEvent) before anything is sent;
// *TransactionOrderError (ErrTransactionOrder) for such a refusal, with
// nothing written and tx usable: roll back and retry the transaction; or a
// database error.
func (s *Store) EnqueueTx(ctx context.Context, tx pgx.Tx, msgs ...Message) error {
	a, err := s.newOutboxArgs(ctx, msgs)
	if err != nil {
		return err
	}
	if err := enqueue(ctx, s.queries.WithTx(tx), &a); err != nil {
		return s.dbError(ctx, err, "enqueue")
	}
	return nil
}

// Enqueue writes msgs to the outbox in a statement of its own and wakes
// the relays. Use EnqueueTx to enqueue in the transaction of your own
// writes; Enqueue is for messages that announce nothing written.
func (s *Store) Enqueue(ctx context.Context, msgs ...Message) error {
	a, err := s.newOutboxArgs(ctx, msgs)
	if err != nil {
		return err
	}
	if err := enqueue(ctx, s.queries, &a); err != nil {
		return s.dbError(ctx, err, "enqueue")
	}
	s.Notify()
	return nil
}

// enqueue runs the enqueue statement (conduit.outbox_enqueue) on q: nil, a
// *TransactionOrderError when it refused, having written nothing, or the
// database's error.
func enqueue(ctx context.Context, q *dbgen.Queries, a *outboxArgs) error {
	r, err := q.OutboxEnqueue(ctx, a.params())
	switch {
	case err != nil:
		return err
	case r.Status == dberr.StatusTransactionOrder:
		return &TransactionOrderError{Key: r.Key}
	case r.Status != dberr.StatusOK:
		return fmt.Errorf("conduit: outbox_enqueue returned unknown status %q", r.Status)
	}
	return nil
}

// OutboxStatus is the outbox's state, from conduit.outbox_status().
type OutboxStatus struct {
	// Pending counts the messages the relay has not passed yet (including
	// those of transactions not committed, or held behind the horizon).
	Pending int64
	// OldestPendingAt is when the first of them was enqueued; zero when
	// none. OldestPendingAge is how long ago.
	OldestPendingAt  time.Time
	OldestPendingAge time.Duration
	// DeadLetters counts messages that kept failing; Held the later
	// messages of their keys, waiting for them.
	DeadLetters, Held int64
	// Delivered counts messages delivered since the outbox was created;
	// LastDeliveryAt is the last time a batch was delivered (zero: never).
	Delivered      int64
	LastDeliveryAt time.Time
	// Owner is the instance holding the relay's lease, "" when none;
	// LeaseExpiresAt when its lease runs out.
	Owner          string
	LeaseExpiresAt time.Time
	// Checkpoint is the position of the last message the relay passed.
	Checkpoint Position
	// FailingMessageID is the message at the head of the outbox that
	// publishing keeps failing on (uuid.Nil: none), FailedAttempts how often,
	// and LastError the last failure.
	FailingMessageID uuid.UUID
	FailedAttempts   int
	LastError        string
	// Generation is the generation new messages go to (0 to 2), and
	// TableBytes the outbox's size on disk, indexes included.
	Generation int
	TableBytes int64
}

// OutboxStatus returns the outbox's state.
func (s *Store) OutboxStatus(ctx context.Context) (OutboxStatus, error) {
	r, err := s.queries.OutboxStatusGet(ctx)
	if err != nil {
		return OutboxStatus{}, s.dbError(ctx, err, "outbox status")
	}
	return OutboxStatus{
		Pending: r.Pending, OldestPendingAt: zeroTime(r.OldestPendingAt),
		OldestPendingAge: time.Duration(r.OldestPendingSeconds * float64(time.Second)),
		DeadLetters:      r.DeadLetters, Held: r.Held, Delivered: r.MessagesDelivered,
		LastDeliveryAt: zeroTime(r.LastDeliveryAt), Owner: r.Owner, LeaseExpiresAt: zeroTime(r.LeaseExpiresAt),
		Checkpoint:       Position{TransactionID: uint64(r.CheckpointTx), GlobalPosition: r.CheckpointPosition},
		FailingMessageID: r.FailingMessageID, FailedAttempts: int(r.FailedAttempts), LastError: r.LastError,
		Generation: int(r.CurrentGeneration), TableBytes: r.TableBytes,
	}, nil
}

// DeadLetter is a message in conduit.outbox_dead: a dead letter (Status
// "dead"), or a later message of its key held back behind it ("held").
type DeadLetter struct {
	Message
	Status    string
	Attempts  int
	LastError string
	DeadAt    time.Time // zero for held messages
	UpdatedAt time.Time
}

// ErrNoDeadLetter is returned by RetryDeadLetter and DiscardDeadLetter for
// an ID that names no dead letter.
var ErrNoDeadLetter = errors.New("conduit: no such dead letter")

// DeadLetters lists the dead letters in outbox order; withHeld adds the
// messages they hold back.
func (s *Store) DeadLetters(ctx context.Context, withHeld bool) ([]DeadLetter, error) {
	rows, err := s.queries.OutboxDeadList(ctx, withHeld)
	if err != nil {
		return nil, s.dbError(ctx, err, "list dead letters")
	}
	out := make([]DeadLetter, len(rows))
	for i, r := range rows {
		m, err := messageFromRow(r.TransactionID, r.Position, r.MessageID, r.Topic, r.Key, r.Payload, r.Headers, r.CreatedAt)
		if err != nil {
			return nil, err
		}
		out[i] = DeadLetter{Message: m, Status: r.Status, Attempts: int(r.Attempts), LastError: r.LastError,
			DeadAt: zeroTime(r.DeadAt), UpdatedAt: r.UpdatedAt}
	}
	return out, nil
}

// RetryDeadLetter asks the relay to deliver a dead letter again, with its
// attempts starting over, followed by the messages of its key it held back
// (SQL: SELECT conduit.retry_dead_letter(id)). The running relay picks it
// up within about its RelayConfig.PollInterval. ErrNoDeadLetter if id names
// none.
func (s *Store) RetryDeadLetter(ctx context.Context, id uuid.UUID) error {
	found, err := s.queries.OutboxDeadRetry(ctx, id)
	if err != nil {
		return s.dbError(ctx, err, "retry dead letter")
	}
	if !found {
		return fmt.Errorf("%w: %s", ErrNoDeadLetter, id)
	}
	s.Notify()
	return nil
}

// DiscardDeadLetter gives up on a dead letter: it is deleted, and the
// messages of its key it held back are delivered next (SQL: SELECT
// conduit.discard_dead_letter(id)), within about the relay's PollInterval.
// ErrNoDeadLetter if id names none.
func (s *Store) DiscardDeadLetter(ctx context.Context, id uuid.UUID) error {
	found, err := s.queries.OutboxDeadDiscard(ctx, id)
	if err != nil {
		return s.dbError(ctx, err, "discard dead letter")
	}
	if !found {
		return fmt.Errorf("%w: %s", ErrNoDeadLetter, id)
	}
	s.Notify()
	return nil
}

// messageFromRow builds a message read from the outbox.
func messageFromRow(tx uint64, pos int64, id uuid.UUID, topic, key string, payload []byte, headers string, created time.Time) (Message, error) {
	m := Message{ID: id, Topic: topic, Key: key, Payload: payload, CreatedAt: created,
		Position: Position{TransactionID: tx, GlobalPosition: pos}}
	if headers != "" {
		var h map[string]string // not &m.Headers: m would escape, an allocation a message
		if err := json.Unmarshal([]byte(headers), &h); err != nil {
			return Message{}, fmt.Errorf("conduit: message %s: headers: %w", id, err)
		}
		m.Headers = h
	}
	return m, nil
}
