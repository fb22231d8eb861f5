package conduit_test

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
)

// The outbox: a rule on the store turns every order_paid into a message,
// enqueued by the append's own statement; EnqueueTx adds a message of your
// own to a transaction; a Relay delivers them to a Publisher (here a
// function; conduitnats.NewPublisher for NATS JetStream), at least once and
// in order per key.
func ExampleRelay() {
	store, done, ok := exampleStore(&conduit.Config{Outbox: []conduit.OutboxRule{
		{EventType: "order_paid", Topic: "orders.paid"}, // key: the stream; payload: the event's data
	}})
	if !ok {
		return
	}
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	paid, err := conduit.NewEvent("order_paid", map[string]int{"cents": 1250})
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := store.Append(ctx, "order-42", conduit.Any, paid); err != nil {
		fmt.Println(err)
		return
	}
	err = store.InTx(ctx, func(tx pgx.Tx) error {
		// ... your own writes in tx ...
		return store.EnqueueTx(ctx, tx, conduit.NewMessage("mail.receipt", "order-42", []byte(`{"to":"ada"}`)))
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	publish := conduit.PublishFunc(func(ctx context.Context, m conduit.Message) error {
		fmt.Printf("%s key=%s %s\n", m.Topic, m.Key, m.Payload)
		return nil // an error is retried with backoff, then dead-lettered
	})
	relay, err := conduit.NewRelay(store, publish, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	// Run(ctx) delivers until ctx ends; Drain delivers what is committed, then returns.
	if err := relay.Drain(ctx); err != nil {
		fmt.Println(err)
		return
	}
	st, err := store.OutboxStatus(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("pending:", st.Pending, "delivered:", st.Delivered, "dead letters:", st.DeadLetters)
	// Output:
	// orders.paid key=order-42 {"cents":1250}
	// mail.receipt key=order-42 {"to":"ada"}
	// pending: 0 delivered: 2 dead letters: 0
}
