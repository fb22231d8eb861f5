// Package engine is the machinery that Conduit's projectors and its outbox
// relay share: leases fenced by an epoch and kept alive by a keeper
// goroutine that also watches the call in flight (lease.go), wake-ups (an
// in-process signal, a coalescing NOTIFY sender and one LISTEN connection
// per Store, notify.go and signal.go), and exponential backoff with jitter
// (backoff.go). Reading below the safe horizon is in the SQL of each
// client's queries; database errors are classified in internal/dberr.
//
// It imports nothing of the root package: the root package's Projector and
// Relay are its two clients, and hand it their statements as functions.
package engine
