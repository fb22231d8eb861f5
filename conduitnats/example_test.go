package conduitnats_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/conduitnats"
	"github.com/conduit-es/conduit/conduitnats/internal/natstest"
)

// The example runs against the tests' NATS server (NATS_URL, else
// nats://127.0.0.1:4222, see internal/natstest). Without one it prints
// why, its output differs from the expected one, and `go test` fails with
// that message: an example that did not run never passes.

// A relay hands the publisher a batch; JetStream stores it once, even when
// the relay publishes it again after a lost acknowledgement.
func Example() {
	url, err := natstest.Server()
	if err != nil {
		fmt.Println("example needs NATS with JetStream (set NATS_URL):", err)
		return
	}
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		fmt.Println("connect:", err)
		return
	}
	defer nc.Close()
	// Acknowledgements that never come expire (see NewPublisher).
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(conduitnats.AckTimeoutDefault))
	if err != nil {
		fmt.Println("jetstream:", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// One stream per environment; its name (random here, so that runs do
	// not collide) is also the subjects' first token.
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	env := "EXAMPLE_" + hex.EncodeToString(suffix)
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:       env,
		Subjects:   []string{env + ".>"},
		Duplicates: 10 * time.Minute, // longer than the relay may retry a message
	})
	if err != nil {
		fmt.Println("create stream:", err)
		return
	}
	defer func() { _ = js.DeleteStream(context.Background(), env) }()

	publisher, err := conduitnats.NewPublisher(js, &conduitnats.Config{SubjectPrefix: env + "."})
	if err != nil {
		fmt.Println("new publisher:", err)
		return
	}
	// In production the relay calls Publish; here we call it directly.
	batch := []conduit.Message{
		conduit.NewMessage("orders.placed", "order-1", []byte(`{"total":42}`)),
		conduit.NewMessage("orders.shipped", "order-1", []byte(`{"carrier":"post"}`)),
	}
	n, err := publisher.Publish(ctx, batch)
	fmt.Println("acknowledged:", n, err)
	n, err = publisher.Publish(ctx, batch) // a redelivery: same IDs
	fmt.Println("acknowledged again:", n, err)

	info, err := stream.Info(ctx)
	if err != nil {
		fmt.Println("stream info:", err)
		return
	}
	fmt.Println("stored:", info.State.Msgs)
	// Output:
	// acknowledged: 2 <nil>
	// acknowledged again: 2 <nil>
	// stored: 2
}
