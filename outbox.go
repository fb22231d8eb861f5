package conduit

import (
	"context"
	"time"

	"github.com/google/uuid"
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
	// its key only. An empty key puts the message in no key's order: it
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
type Publisher interface {
	Publish(ctx context.Context, msgs []Message) (int, error)
}

// PublishFunc adapts a function that publishes one message to a Publisher:
// it publishes a batch one message at a time, in order, and stops at the
// first error.
type PublishFunc func(ctx context.Context, m Message) error

// Publish calls f on each message in turn until one fails.
func (f PublishFunc) Publish(ctx context.Context, msgs []Message) (int, error) {
	for i, m := range msgs {
		if err := f(ctx, m); err != nil {
			return i, err
		}
	}
	return len(msgs), nil
}
