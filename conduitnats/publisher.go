package conduitnats

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/conduit-es/conduit"
)

// Config configures a Publisher. The zero value is the default.
type Config struct {
	// SubjectPrefix is put before each message's Topic, as it is, to make
	// the subject it is published to: include the separator ("shop." turns
	// topic "orders.placed" into "shop.orders.placed"). It must not contain
	// whitespace. Defaults to none: the subject is the Topic.
	SubjectPrefix string
	// MaxInFlight is how many messages of a batch may await their
	// acknowledgement at once: Publish sends the next message only when
	// fewer are outstanding. 1 turns pipelining off: each message is sent
	// only once the one before it is acknowledged (see the package doc,
	// "Order", for when that matters and what it costs). Defaults to
	// MaxInFlightDefault.
	MaxInFlight int
	// AckTimeout bounds one call of Publish, from its start until the last
	// acknowledgement: a message still unacknowledged then fails with
	// ErrAckTimeout, and so does a message that could not be sent in time
	// because the connection's own limit of pending acknowledgements
	// (jetstream.WithPublishAsyncMaxPending) was reached. Defaults to
	// AckTimeoutDefault.
	AckTimeout time.Duration
}

// Defaults of Config's fields.
const (
	// MaxInFlightDefault is the default of Config.MaxInFlight.
	MaxInFlightDefault = 256
	// AckTimeoutDefault is the default of Config.AckTimeout.
	AckTimeoutDefault = 5 * time.Second
)

// KeyHeader is the NATS header that carries a message's Key, so consumers
// can see which order it belongs to. It is set only for a non-empty key,
// and replaces a header of that name in the message's Headers.
const KeyHeader = "Conduit-Key"

var (
	// ErrAckTimeout: no acknowledgement came within Config.AckTimeout of
	// the start of Publish. JetStream may have stored the message.
	ErrAckTimeout = errors.New("conduitnats: no acknowledgement within the ack timeout")
	// ErrNotConnected: the NATS connection was not connected (it was
	// reconnecting, draining or closed), so the message was not sent.
	ErrNotConnected = errors.New("conduitnats: not connected to NATS")
	// ErrNoMessageID: the message's ID is the zero UUID, so JetStream could
	// not de-duplicate it; it was not sent. conduit.NewMessage assigns one.
	ErrNoMessageID = errors.New("conduitnats: message has no ID")
	// ErrInvalidSubject: the subject (Config.SubjectPrefix and the Topic) is
	// not one a message can be published to: empty, with whitespace or a
	// control character, an empty token ("a..b", ".a", "a.") or a wildcard
	// token ("*", ">"). The message was not sent.
	ErrInvalidSubject = errors.New("conduitnats: invalid subject")
	// ErrInvalidHeader: a header name is empty or contains a colon,
	// whitespace or a control character, or a header value or the Key
	// (sent as a header) contains a carriage return or a line feed. The
	// message was not sent.
	ErrInvalidHeader = errors.New("conduitnats: invalid header")
)

// PublishError says which message of a batch was not published, and why.
// Publish returns one whenever it returns fewer than len(msgs).
type PublishError struct {
	// Index is the message's index in the batch: the count Publish
	// returned with this error.
	Index int
	// ID is the message's ID, sent as Nats-Msg-Id.
	ID uuid.UUID
	// Subject is the subject the message was for.
	Subject string
	// OutcomeUnknown is true when JetStream may have stored the message: it
	// was sent, but its acknowledgement did not come (ErrAckTimeout, ctx
	// ended, the connection was lost: nats.ErrDisconnected). Resending it
	// is safe within the stream's duplicate window. False when JetStream
	// did not store it: it was never sent (ErrNotConnected,
	// ErrInvalidSubject, ErrNoMessageID, nats.ErrMaxPayload, ...) or
	// JetStream refused it (jetstream.ErrNoStreamResponse: no stream is
	// bound to the subject; a *jetstream.APIError, such as a full stream
	// with the DiscardNew policy).
	OutcomeUnknown bool
	// Err is the cause; errors.Is and errors.As see through to it.
	Err error
}

// Error says which message failed, whether JetStream may have stored it,
// and why.
func (e *PublishError) Error() string {
	what := "not stored"
	if e.OutcomeUnknown {
		what = "not acknowledged"
	}
	return fmt.Sprintf("conduitnats: message %d (id %s) to %q %s: %v", e.Index, e.ID, e.Subject, what, e.Err)
}

// Unwrap returns Err.
func (e *PublishError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, conduit.ErrBrokerUnavailable) true when NATS
// could not be reached or did not acknowledge (OutcomeUnknown, or
// ErrNotConnected): the relay then retries for as long as the outage lasts
// without counting an attempt, so an outage never makes dead letters. A
// refusal by JetStream (no stream bound to the subject, a full stream, an
// invalid message) counts an attempt.
func (e *PublishError) Is(target error) bool {
	return target == conduit.ErrBrokerUnavailable && (e.OutcomeUnknown || errors.Is(e.Err, ErrNotConnected))
}

// Publisher publishes outbox messages to NATS JetStream: a
// conduit.Publisher. Its methods may be called from several goroutines; a
// Relay calls Publish from one at a time.
type Publisher struct {
	js  jetstream.JetStream
	cfg Config
}

var _ conduit.Publisher = (*Publisher)(nil)

// NewPublisher returns a Publisher that publishes with js. A nil cfg means
// the defaults. Creating the streams that bind the subjects is left to you
// (see the package doc). A field of cfg out of its range is reported as a
// *conduit.ConfigError (errors.Is(err, conduit.ErrInvalidConfig)).
//
// Make js with jetstream.WithPublishAsyncTimeout (Config.AckTimeout, say).
// Publish gives up on an acknowledgement that does not come, but js keeps
// waiting for it until that timeout, or, without one, for as long as the
// connection lasts; once jetstream.WithPublishAsyncMaxPending of them pend
// (4000 by default), js sends nothing more, and every Publish fails with
// jetstream.ErrTooManyStalledMsgs (and ErrAckTimeout) after AckTimeout.
func NewPublisher(js jetstream.JetStream, cfg *Config) (*Publisher, error) {
	if js == nil {
		return nil, errors.New("conduitnats: NewPublisher: nil JetStream")
	}
	var c Config
	if cfg != nil {
		c = *cfg
	}
	switch {
	case c.MaxInFlight < 0:
		return nil, &conduit.ConfigError{Field: "conduitnats.Config.MaxInFlight",
			Reason: fmt.Sprintf("%d is negative", c.MaxInFlight)}
	case c.AckTimeout < 0:
		return nil, &conduit.ConfigError{Field: "conduitnats.Config.AckTimeout",
			Reason: fmt.Sprintf("%s is negative", c.AckTimeout)}
	case strings.ContainsFunc(c.SubjectPrefix, badSubjectRune):
		return nil, &conduit.ConfigError{Field: "conduitnats.Config.SubjectPrefix",
			Reason: fmt.Sprintf("%q contains whitespace or a control character", c.SubjectPrefix)}
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = MaxInFlightDefault
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = AckTimeoutDefault
	}
	return &Publisher{js: js, cfg: c}, nil
}

// Publish publishes msgs in order and waits for JetStream to acknowledge
// them, keeping up to Config.MaxInFlight messages unacknowledged at once.
// It returns how many of msgs, counted from the first, JetStream
// acknowledged (a duplicate JetStream dropped counts: it was stored
// before), and, when that is fewer than len(msgs), a *PublishError for the
// next one. If message i fails, Publish returns i even if later messages
// were acknowledged, and sends nothing after a message it could not send.
// It returns within Config.AckTimeout, or when ctx ends.
func (p *Publisher) Publish(ctx context.Context, msgs []conduit.Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeoutCause(ctx, p.cfg.AckTimeout, ErrAckTimeout)
	defer cancel()

	futures := make([]jetstream.PubAckFuture, 0, len(msgs))
	acked := 0 // msgs[:acked] are acknowledged; futures[acked:] are outstanding
	// Made once for the batch, not once a message: the options' slice, and
	// the subject of the last topic (a batch's topics are few).
	opts := []jetstream.PublishOpt{noRetry, nil}
	var topic, subject string
	var subjectErr error
	awaitNext := func() error {
		err := p.await(ctx, acked, &msgs[acked], futures[acked])
		if err == nil {
			acked++
		}
		return err
	}
	var sendErr error
	for i := range msgs {
		for len(futures)-acked >= p.cfg.MaxInFlight {
			if err := awaitNext(); err != nil {
				return acked, err
			}
		}
		if m := &msgs[i]; subject == "" || m.Topic != topic {
			topic, subject = m.Topic, p.cfg.SubjectPrefix+m.Topic
			subjectErr = checkSubject(subject)
		}
		f, err := p.send(ctx, i, &msgs[i], subject, subjectErr, opts)
		if err != nil {
			// Nothing after a message that was not sent is sent; the ones
			// before it still count once acknowledged.
			sendErr = err
			break
		}
		futures = append(futures, f)
	}
	for acked < len(futures) {
		if err := awaitNext(); err != nil {
			return acked, err
		}
	}
	return acked, sendErr
}

// noRetry is the publish option that turns off nats.go's own retry.
var noRetry = jetstream.WithRetryAttempts(0)

// send hands msgs[i] to the connection and returns the future of its
// acknowledgement. subject is its subject, subjectErr what checkSubject
// said of it; opts holds noRetry and a slot for the stall wait.
func (p *Publisher) send(ctx context.Context, i int, m *conduit.Message, subject string, subjectErr error, opts []jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	notSent := func(err error) error { return &PublishError{Index: i, ID: m.ID, Subject: subject, Err: err} }
	if ctx.Err() != nil {
		return nil, notSent(context.Cause(ctx))
	}
	if m.ID == uuid.Nil {
		return nil, notSent(ErrNoMessageID)
	}
	if subjectErr != nil {
		return nil, notSent(subjectErr)
	}
	header, err := natsHeader(m)
	if err != nil {
		return nil, notSent(err)
	}
	// While reconnecting, nats.Conn would buffer the message and send it
	// after the reconnection, when an earlier message of the batch may have
	// been lost with the old connection: a later message of a key stored
	// before an earlier one. Not sending it keeps the order (see the
	// package doc, "Order").
	if status := p.js.Conn().Status(); status != nats.CONNECTED {
		return nil, notSent(fmt.Errorf("%w (%s)", ErrNotConnected, status))
	}
	deadline, _ := ctx.Deadline()
	// opts[0], noRetry: no retry behind the relay's back: a message retried
	// after "no responders" could be stored after a later message of its
	// key. The relay retries, with backoff, in order. opts[1]: waiting for
	// room under the connection's own limit of pending acknowledgements
	// counts against AckTimeout.
	opts[1] = jetstream.WithStallWait(max(time.Until(deadline), time.Millisecond))
	f, err := p.js.PublishMsgAsync(&nats.Msg{Subject: subject, Header: header, Data: m.Payload}, opts...)
	if err != nil {
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			// The wait for room lasted until ctx's deadline, so ctx ends
			// now (if it has not already): say why.
			<-ctx.Done()
			err = fmt.Errorf("%w: %w", context.Cause(ctx), err)
		}
		return nil, notSent(err)
	}
	return f, nil
}

// await waits for the acknowledgement of msgs[i], sent with future f.
func (p *Publisher) await(ctx context.Context, i int, m *conduit.Message, f jetstream.PubAckFuture) error {
	fail := func(err error, unknown bool) error {
		return &PublishError{Index: i, ID: m.ID, Subject: p.cfg.SubjectPrefix + m.Topic, OutcomeUnknown: unknown, Err: err}
	}
	ackErr := func(err error) error {
		var apiErr *jetstream.APIError
		refused := errors.Is(err, jetstream.ErrNoStreamResponse) || errors.As(err, &apiErr)
		return fail(err, !refused)
	}
	// An answer that has come counts, even if ctx has ended meanwhile.
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return ackErr(err)
	default:
	}
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return ackErr(err)
	case <-ctx.Done():
		return fail(context.Cause(ctx), true)
	}
}

// natsHeader returns m's Headers, Key and ID as NATS headers: the ID as
// JetStream's de-duplication ID (jetstream.MsgIDHeader, what
// jetstream.WithMsgID sets; set here, it costs no option a message).
func natsHeader(m *conduit.Message) (nats.Header, error) {
	h := make(nats.Header, len(m.Headers)+2)
	for k, v := range m.Headers {
		if k == "" || strings.ContainsFunc(k, func(r rune) bool { return r == ':' || badSubjectRune(r) }) {
			return nil, fmt.Errorf("%w: name %q", ErrInvalidHeader, k)
		}
		if strings.ContainsAny(v, "\r\n") {
			return nil, fmt.Errorf("%w: value of %q contains a line break", ErrInvalidHeader, k)
		}
		h.Set(k, v)
	}
	if m.Key != "" {
		if strings.ContainsAny(m.Key, "\r\n") {
			return nil, fmt.Errorf("%w: key %q contains a line break", ErrInvalidHeader, m.Key)
		}
		h.Set(KeyHeader, m.Key)
	}
	h[jetstream.MsgIDHeader] = []string{m.ID.String()} // replaces a header of that name in m.Headers
	return h, nil
}

// checkSubject returns an error wrapping ErrInvalidSubject unless subject
// can be published to.
func checkSubject(subject string) error {
	if subject == "" {
		return fmt.Errorf("%w: empty", ErrInvalidSubject)
	}
	if strings.ContainsFunc(subject, badSubjectRune) {
		return fmt.Errorf("%w: %q contains whitespace or a control character", ErrInvalidSubject, subject)
	}
	for token := range strings.SplitSeq(subject, ".") {
		switch token {
		case "":
			return fmt.Errorf("%w: %q has an empty token", ErrInvalidSubject, subject)
		case "*", ">":
			return fmt.Errorf("%w: %q has a wildcard token", ErrInvalidSubject, subject)
		}
	}
	return nil
}

// badSubjectRune reports a rune that would break the NATS protocol line a
// subject or a header name is sent in.
func badSubjectRune(r rune) bool {
	return r <= ' ' || r == 0x7f
}
