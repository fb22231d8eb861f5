// Package conduitnats publishes Conduit's outbox to NATS JetStream: a
// conduit.Publisher for a Relay, so that messages written in the same
// transaction as your events reach JetStream at least once, in order per
// key, and reach its consumers once.
//
//	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
//	...
//	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(5*time.Second))
//	...
//	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
//		Name:       "SHOP",
//		Subjects:   []string{"shop.>"},
//		Duplicates: 10 * time.Minute, // longer than the relay may retry a message
//	})
//	...
//	publisher, err := conduitnats.NewPublisher(js, &conduitnats.Config{SubjectPrefix: "shop."})
//
// It is a module of its own (github.com/conduit-es/conduit/conduitnats), so
// that programs that do not use NATS do not get nats.go in their module
// graph.
//
// # What a message becomes
//
// A conduit.Message is published to the subject Config.SubjectPrefix +
// Topic, with its Payload as the data, its Headers as NATS headers, its Key
// in the header Conduit-Key (KeyHeader; not set for an empty key) and its
// ID, as text, in Nats-Msg-Id. Those two replace headers of the same names
// in Headers; other headers, such as JetStream's Nats-Expected-Stream, go
// as they are. Creating the streams is left to you: a subject that no
// stream binds is refused (jetstream.ErrNoStreamResponse), and the relay
// retries the message until it dead-letters it.
//
// # At least once, and de-duplication
//
// Publish counts a message as published only once JetStream has
// acknowledged storing it. A message whose acknowledgement was lost is
// published again by the relay, with the same ID; JetStream drops the copy
// (acknowledging it as a duplicate) if it comes within the stream's
// duplicate window: StreamConfig.Duplicates, two minutes unless you set
// it. A copy that comes later is stored again. So set Duplicates longer
// than the longest time the relay may keep resending a message (its
// backoff, and the outages you want to ride out), bearing in mind that
// JetStream keeps the IDs of the whole window in memory. JetStream's
// consumers deliver at least once too: consumers that must act once keep
// their own record of the Nats-Msg-Id values they have handled.
//
// # Order
//
// Publish pipelines a batch: it sends up to Config.MaxInFlight messages
// before waiting for their acknowledgements, in the batch's order, on one
// connection, so JetStream receives them, and stores those it accepts, in
// that order. (Order is per stream: messages of one key sent to subjects
// of different streams have no order between them.) A later message of a
// key can then be stored before an earlier one in two cases:
//
//   - JetStream refuses the earlier message itself while accepting the
//     later one: no stream bound to the earlier message's subject, a stream
//     that was full (DiscardNew) when the earlier one came, an earlier
//     message larger than the stream's MaxMsgSize. Publish returns the
//     earlier message's index; the relay retries it (and dead-letters it if
//     it keeps failing), but the later one is already stored, ahead of it.
//   - The connection drops after the earlier message was written to it and
//     before the later one is: the earlier one is lost with the old
//     connection, while nats.Conn buffers the later one and sends it after
//     the reconnection. Publish sends nothing while the connection is not
//     connected, which leaves only the moment between that check and the
//     send; connect with nats.ReconnectBufSize(-1) (nats.Conn then refuses
//     to buffer, and the send fails) to close it.
//
// For the same reason Publish does not let JetStream's client retry a
// message that met "no responders" by itself: the retry would land after
// the messages sent meanwhile. The relay retries it, in order.
//
// If a key's messages must be stored in order even in those cases, set
// MaxInFlight to 1: each message is sent only once the one before it is
// acknowledged, so nothing after a refused or lost message is sent. It
// costs a round trip to the JetStream server (and, in a cluster, the
// stream's replication) per message instead of per batch: the relay's
// throughput is bounded by one message per round trip. BenchmarkPublish
// measures both; on loopback to one server, one at a time published about
// a sixth as many messages per second as the default, and the gap grows
// with the round trip.
//
// # Failure handling
//
// Publish returns how many messages, counted from the first, JetStream
// acknowledged, and a *PublishError for the next one. PublishError.Index
// and ID name the message, Subject where it went, and OutcomeUnknown tells
// the two cases apart: JetStream did not store the message (it refused it,
// or it was never sent), or it may have (the acknowledgement did not come
// within Config.AckTimeout, ctx ended, or the connection was lost). The
// relay retries both the same way, which the de-duplication makes safe.
// Messages after the failed one may have been stored too: they are
// published again, and dropped as duplicates.
//
// With the server gone, Publish fails fast with ErrNotConnected once
// nats.Conn has noticed, and within Config.AckTimeout otherwise; give the
// connection unlimited reconnects (nats.MaxReconnects(-1)) so that
// publishing resumes by itself when the server is back.
package conduitnats
