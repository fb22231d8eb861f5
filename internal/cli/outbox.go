package cli

import (
	"encoding/base64"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/conduit-es/conduit"
)

func (a *app) outboxCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "outbox",
		Short: "Status and dead letters of the transactional outbox",
		Long: `The outbox and its relay, as conduit.outbox_status(), conduit.outbox_dead,
conduit.retry_dead_letter and conduit.discard_dead_letter show and change
them: the command calls the same SQL as a user at a psql prompt.`,
		Example: `  conduit outbox status
  conduit outbox dead
  conduit outbox retry 0193a5c2-7d1e-7c3a-9f0e-1b2c3d4e5f60`,
	}
	cmd.AddCommand(a.outboxStatusCommand(), a.outboxDeadCommand(),
		a.outboxDeadActionCommand("retry"), a.outboxDeadActionCommand("discard"))
	return cmd
}

// outboxStatusJSON is `conduit outbox status --json`.
type outboxStatusJSON struct {
	Pending           int64      `json:"pending"`
	OldestPendingAt   *time.Time `json:"oldest_pending_at"`
	OldestPendingSecs float64    `json:"oldest_pending_seconds"`
	DeadLetters       int64      `json:"dead_letters"`
	Held              int64      `json:"held"`
	Delivered         int64      `json:"delivered"`
	LastDeliveryAt    *time.Time `json:"last_delivery_at"`
	Owner             string     `json:"owner"`
	LeaseExpiresAt    *time.Time `json:"lease_expires_at"`
	Checkpoint        string     `json:"checkpoint"`
	FailingMessageID  *uuid.UUID `json:"failing_message_id"`
	FailedAttempts    int        `json:"failed_attempts"`
	LastError         string     `json:"last_error"`
	Generation        int        `json:"generation"`
	TableBytes        int64      `json:"table_bytes"`
}

const outboxStatusJSONHelp = `{"pending": 0, "oldest_pending_at": null, "oldest_pending_seconds": 0,
"dead_letters": 0, "held": 0, "delivered": 1200, "last_delivery_at": "2026-11-30T18:00:00Z",
"owner": "host-1-…", "lease_expires_at": "…", "checkpoint": "742/1001",
"failing_message_id": null, "failed_attempts": 0, "last_error": "",
"generation": 1, "table_bytes": 81920}`

func (a *app) outboxStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Pending messages, the oldest one's age, dead letters, the last delivery, the relay",
		Long: `The outbox's state: messages the relay has not passed and the age of the
oldest, dead letters and the messages they hold back, deliveries, the relay
holding the lease, and the message it keeps failing on.
The same as SELECT * FROM conduit.outbox_status(); at a psql prompt.

JSON (--json): ` + outboxStatusJSONHelp,
		Example: `  conduit outbox status
  conduit outbox status --json | jq .pending`,
		Args:              args(0, 0),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, _ []string) error {
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			s, err := store.OutboxStatus(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(outboxStatusJSON{
					Pending: s.Pending, OldestPendingAt: timePtr(s.OldestPendingAt), OldestPendingSecs: s.OldestPendingAge.Seconds(),
					DeadLetters: s.DeadLetters, Held: s.Held, Delivered: s.Delivered, LastDeliveryAt: timePtr(s.LastDeliveryAt),
					Owner: s.Owner, LeaseExpiresAt: timePtr(s.LeaseExpiresAt), Checkpoint: s.Checkpoint.String(),
					FailingMessageID: uuidPtr(s.FailingMessageID), FailedAttempts: s.FailedAttempts, LastError: s.LastError,
					Generation: s.Generation, TableBytes: s.TableBytes,
				})
			}
			w := a.table()
			row(w, "pending", fmt.Sprintf("%d messages, the oldest %s old", s.Pending, duration(s.OldestPendingAge)))
			row(w, "dead letters", fmt.Sprintf("%d (holding back %d messages of their keys)", s.DeadLetters, s.Held))
			row(w, "delivered", fmt.Sprintf("%d, last %s", s.Delivered, ago(s.LastDeliveryAt)))
			owner := s.Owner
			if owner == "" {
				owner = "none (no relay holds the lease)"
			}
			row(w, "relay", owner)
			row(w, "checkpoint", s.Checkpoint)
			if s.FailingMessageID != uuid.Nil {
				row(w, "failing on", fmt.Sprintf("%s (%d attempts): %s", s.FailingMessageID, s.FailedAttempts, s.LastError))
			}
			row(w, "table", fmt.Sprintf("generation %d current, %s on disk", s.Generation, byteSize(s.TableBytes)))
			return w.Flush()
		},
	}
}

// deadLetterJSON is one row of `conduit outbox dead --json`.
type deadLetterJSON struct {
	ID        uuid.UUID         `json:"id"`
	Topic     string            `json:"topic"`
	Key       string            `json:"key"`
	Status    string            `json:"status"`
	Attempts  int               `json:"attempts"`
	LastError string            `json:"last_error"`
	DeadAt    *time.Time        `json:"dead_at"`
	CreatedAt time.Time         `json:"created_at"`
	Position  string            `json:"position"`
	Headers   map[string]string `json:"headers"`
	Payload   string            `json:"payload"`
	Encoding  string            `json:"payload_encoding"` // "utf8" or "base64"
}

func (a *app) outboxDeadCommand() *cobra.Command {
	var held bool
	cmd := &cobra.Command{
		Use:   "dead",
		Short: "List dead letters (with --held, the messages they hold back)",
		Long: `Dead letters: messages the relay gave up on after RelayConfig.MaxAttempts
failed attempts, in outbox order, with their last error. A dead letter holds
back the later messages of its key only; --held lists those too.
The same as SELECT * FROM conduit.outbox_dead; at a psql prompt.

JSON (--json): an array of {"id": "0193…", "topic": "orders.paid", "key": "order-42",
"status": "dead" | "held", "attempts": 10, "last_error": "…", "dead_at": "…" | null,
"created_at": "…", "position": "742/1001", "headers": {…} | null,
"payload": "…", "payload_encoding": "utf8" | "base64"}`,
		Example: `  conduit outbox dead
  conduit outbox dead --held --json | jq -r '.[] | select(.status == "dead") | .id'`,
		Args:              args(0, 0),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, _ []string) error {
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			dead, err := store.DeadLetters(cmd.Context(), held)
			if err != nil {
				return err
			}
			if a.json {
				out := make([]deadLetterJSON, len(dead))
				for i, d := range dead {
					payload, enc := string(d.Payload), "utf8"
					if !utf8.Valid(d.Payload) {
						payload, enc = base64.StdEncoding.EncodeToString(d.Payload), "base64"
					}
					out[i] = deadLetterJSON{ID: d.ID, Topic: d.Topic, Key: d.Key, Status: d.Status, Attempts: d.Attempts,
						LastError: d.LastError, DeadAt: timePtr(d.DeadAt), CreatedAt: d.CreatedAt, Position: d.Position.String(),
						Headers: d.Headers, Payload: payload, Encoding: enc}
				}
				return a.printJSON(out)
			}
			if len(dead) == 0 {
				fmt.Fprintln(a.errOut, "no dead letters")
				return nil
			}
			w := a.table()
			row(w, "ID", "STATUS", "TOPIC", "KEY", "ATTEMPTS", "SINCE", "LAST ERROR")
			for _, d := range dead {
				row(w, d.ID, d.Status, d.Topic, d.Key, d.Attempts, ago(d.DeadAt), d.LastError)
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&held, "held", false, "also list the messages the dead letters hold back")
	return cmd
}

func (a *app) outboxDeadActionCommand(action string) *cobra.Command {
	short, long, status := "Deliver a dead letter again, then the messages of its key it held back",
		`Ask the relay to deliver dead letter ID again (its attempts start over),
then the later messages of its key it held back, in order.
SQL: SELECT conduit.retry_dead_letter('ID');`, "retry"
	if action == "discard" {
		short, long, status = "Drop a dead letter; deliver the messages of its key it held back",
			`Give up on dead letter ID for good (it is deleted); the later messages of
its key it held back are delivered next, in order.
SQL: SELECT conduit.discard_dead_letter('ID');`, "discarded"
	}
	return &cobra.Command{
		Use:   action + " ID",
		Short: short,
		Long: long + `
No such dead letter: exit code 5.

JSON (--json): {"id": "0193…", "status": "` + status + `"}`,
		Example:           "  conduit outbox " + action + " 0193a5c2-7d1e-7c3a-9f0e-1b2c3d4e5f60",
		Args:              args(1, 1),
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: func(cmd *cobra.Command, argv []string) error {
			id, err := uuid.Parse(argv[0])
			if err != nil {
				return usageErrorf("message id %q: %v", argv[0], err)
			}
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			if action == "discard" {
				err = store.DiscardDeadLetter(cmd.Context(), id)
			} else {
				err = store.RetryDeadLetter(cmd.Context(), id)
			}
			if errors.Is(err, conduit.ErrNoDeadLetter) {
				return &exitError{code: ExitNotFound, err: err, hint: "`conduit outbox dead` lists the dead letters"}
			}
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]any{"id": id, "status": status})
			}
			if action == "discard" {
				fmt.Fprintf(a.out, "discarded dead letter %s; the messages of its key it held back go next\n", id)
			} else {
				fmt.Fprintf(a.out, "dead letter %s will be delivered again by the relay, then the messages it held back\n", id)
			}
			return nil
		},
	}
}
