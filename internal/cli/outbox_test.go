package cli

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/conduit-es/conduit"
)

// outbox status, dead, retry and discard against a real outbox and relay:
// a poison message dead-letters, holds back its key; retry and discard
// from the terminal let the relay deliver; the expected failures have
// their exit codes.
func TestOutboxCommands(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url, store := migratedDatabase(t)

	st := decode[outboxStatusJSON](t, mustRun(t, ExitOK, url, "", "outbox", "status", "--json"))
	if st.Pending != 0 || st.DeadLetters != 0 || st.Owner != "" {
		t.Fatalf("empty outbox: %+v", st)
	}
	failing := map[string]bool{"a1": true, "b1": true}
	var delivered []string
	pub := conduit.PublishFunc(func(_ context.Context, m conduit.Message) error {
		if failing[string(m.Payload)] {
			return errors.New("broker refuses " + string(m.Payload))
		}
		delivered = append(delivered, string(m.Payload))
		return nil
	})
	relay, err := conduit.NewRelay(store, pub, &conduit.RelayConfig{MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []conduit.Message
	for _, p := range []string{"a1", "b1", "a2", "b2", "c1"} {
		msgs = append(msgs, conduit.NewMessage("t", p[:1], []byte(p)))
	}
	if err := store.Enqueue(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	drain := func() {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := relay.Drain(dctx); err != nil {
			t.Fatal(err)
		}
	}
	drain()

	st = decode[outboxStatusJSON](t, mustRun(t, ExitOK, url, "", "outbox", "status", "--json"))
	if st.DeadLetters != 2 || st.Held != 2 || st.Delivered != 1 || st.LastDeliveryAt == nil {
		t.Fatalf("status after the failures: %+v", st)
	}
	human := mustRun(t, ExitOK, url, "", "outbox", "status")
	if !strings.Contains(human.stdout, "2 (holding back 2 messages of their keys)") {
		t.Fatalf("status for people:\n%s", human.stdout)
	}
	dead := decode[[]deadLetterJSON](t, mustRun(t, ExitOK, url, "", "outbox", "dead", "--json"))
	if len(dead) != 2 || dead[0].Payload != "a1" || dead[0].Status != "dead" || dead[0].LastError != "broker refuses a1" {
		t.Fatalf("dead letters: %+v", dead)
	}
	withHeld := decode[[]deadLetterJSON](t, mustRun(t, ExitOK, url, "", "outbox", "dead", "--held", "--json"))
	if len(withHeld) != 4 {
		t.Fatalf("dead letters and held: %+v", withHeld)
	}
	table := mustRun(t, ExitOK, url, "", "outbox", "dead")
	if !strings.Contains(table.stdout, dead[0].ID.String()) || !strings.Contains(table.stdout, "LAST ERROR") {
		t.Fatalf("dead letters for people:\n%s", table.stdout)
	}

	failing = map[string]bool{}
	mustRun(t, ExitOK, url, "", "outbox", "retry", dead[0].ID.String())
	r := mustRun(t, ExitOK, url, "", "outbox", "discard", dead[1].ID.String(), "--json")
	if !strings.Contains(r.stdout, `"discarded"`) {
		t.Fatalf("discard --json: %s", r.stdout)
	}
	drain()
	if got := strings.Join(delivered, " "); got != "c1 a1 a2 b2" {
		t.Fatalf("delivered %q; want c1, then a1 a2 (retried), b2 (its dead letter discarded)", got)
	}

	// Expected failures.
	r = mustRun(t, ExitNotFound, url, "", "outbox", "retry", uuid.NewString())
	if !strings.Contains(r.stderr, "conduit outbox dead") {
		t.Fatalf("unknown id: no hint:\n%s", r)
	}
	mustRun(t, ExitNotFound, url, "", "outbox", "discard", dead[0].ID.String()) // delivered: no longer a dead letter
	mustRun(t, ExitUsage, url, "", "outbox", "retry", "not-a-uuid")
	mustRun(t, ExitUsage, url, "", "outbox", "retry")
	r = mustRun(t, ExitError, emptyDatabase(t), "", "outbox", "status")
	if !strings.Contains(r.stderr, "conduit migrate up") {
		t.Fatalf("unmigrated database: no hint:\n%s", r)
	}
	if h := mustRun(t, ExitOK, "", "", "outbox", "dead", "--help"); !strings.Contains(h.stdout, "Examples:") {
		t.Fatalf("help without an example:\n%s", h.stdout)
	}
}
