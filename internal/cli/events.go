package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/dbgen"
)

// appendJSON is what `append` prints.
type appendJSON struct {
	StreamID  string    `json:"stream_id"`
	EventID   uuid.UUID `json:"event_id"`
	Version   int64     `json:"version"`
	Position  string    `json:"position"`
	Duplicate bool      `json:"duplicate"`
}

// streamJSON is what `stream` prints.
type streamJSON struct {
	StreamID string     `json:"stream_id"`
	Version  int64      `json:"version"`
	First    *eventJSON `json:"first"`
	Last     *eventJSON `json:"last"`
}

const eventJSONHelp = `{"stream_id": "order-42", "version": 1, "position": "742/1001",
"transaction_id": 742, "global_position": 1001, "id": "0193…", "type": "order_placed",
"data": {...}, "metadata": null, "recorded_at": "2026-11-30T18:00:00.123Z"}`

func (a *app) appendCommand() *cobra.Command {
	var expect, metadata, id string
	cmd := &cobra.Command{
		Use:   "append STREAM TYPE [JSON|-]",
		Short: "Append one event to a stream",
		Long: `Append one event of type TYPE to STREAM. The data is the JSON argument,
or standard input with -, or {} without either.

--expect is the expected version: any (default), no-stream, exists, or a
version number (0 is no-stream). When it does not hold nothing is written
and the exit code is 4. --id sets the event id (default: a new UUIDv7):
appending the same id at the same place again is an idempotent retry that
writes nothing ("duplicate": true).

JSON (--json): {"stream_id": "order-42", "event_id": "0193…", "version": 3,
"position": "742/1001", "duplicate": false}`,
		Example: `  conduit append order-42 order_placed '{"customer":"c-7"}' --expect no-stream
  echo '{"sku":"A1","qty":2}' | conduit append order-42 item_added - --expect 1`,
		Args: args(2, 3),
		RunE: func(cmd *cobra.Command, argv []string) error {
			expected, err := parseExpect(expect)
			if err != nil {
				return err
			}
			data := json.RawMessage("{}")
			if len(argv) == 3 {
				if data, err = a.readData(argv[2]); err != nil {
					return err
				}
			}
			ev := conduit.EventData{Type: argv[1], Data: data}
			if metadata != "" {
				ev.Metadata = json.RawMessage(metadata)
			}
			if id != "" {
				if ev.ID, err = uuid.Parse(id); err != nil {
					return usageErrorf("--id %q: %v", id, err)
				}
			} else if ev.ID, err = uuid.NewV7(); err != nil {
				return err
			}
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			res, err := store.Append(cmd.Context(), argv[0], expected, ev)
			if errors.Is(err, conduit.ErrVersionConflict) {
				return withHint(err, fmt.Sprintf("read the stream again (`conduit stream %s`) and decide again", argv[0]))
			}
			if err != nil {
				return err
			}
			out := appendJSON{StreamID: argv[0], EventID: ev.ID, Version: res.Version, Position: res.Position.String(),
				Duplicate: res.Duplicate}
			if a.json {
				return a.printJSON(out)
			}
			if res.Duplicate {
				fmt.Fprintf(a.out, "already stored (an idempotent retry): %s version %d, event %s\n", argv[0], res.Version, ev.ID)
				return nil
			}
			fmt.Fprintf(a.out, "appended to %s: version %d, position %s, event %s\n", argv[0], res.Version, res.Position, ev.ID)
			return nil
		},
	}
	cmd.Flags().StringVar(&expect, "expect", "any", "expected version: any, no-stream, exists or a number")
	cmd.Flags().StringVar(&metadata, "metadata", "", "the event's metadata, a JSON object")
	cmd.Flags().StringVar(&id, "id", "", "the event's id (default: a new UUIDv7); reuse it to retry safely")
	return cmd
}

func parseExpect(s string) (conduit.ExpectedVersion, error) {
	switch s {
	case "any":
		return conduit.Any, nil
	case "no-stream":
		return conduit.NoStream, nil
	case "exists", "stream-exists":
		return conduit.StreamExists, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, usageErrorf("--expect %q: want any, no-stream, exists or a version number", s)
	}
	return conduit.Exactly(n), nil
}

// readData returns the JSON argument, or standard input for "-".
func (a *app) readData(arg string) (json.RawMessage, error) {
	if arg != "-" {
		return json.RawMessage(arg), nil
	}
	b, err := io.ReadAll(a.in)
	if err != nil {
		return nil, fmt.Errorf("read standard input: %w", err)
	}
	return json.RawMessage(strings.TrimSpace(string(b))), nil
}

func (a *app) readCommand() *cobra.Command {
	var from, limit int64
	cmd := &cobra.Command{
		Use:   "read STREAM",
		Short: "Print a stream's events",
		Long: `Print STREAM's events in version order, from --from (default 1), at
most --limit of them (default all). A stream without events prints nothing.

JSON (--json): an array of events, each
` + eventJSONHelp,
		Example: `  conduit read order-42
  conduit read order-42 --from 3 --json | jq '.[].type'`,
		Args: args(1, 1),
		RunE: func(cmd *cobra.Command, argv []string) error {
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			events := []eventJSON{}
			w := a.table()
			if !a.json {
				row(w, "VERSION", "POSITION", "TYPE", "RECORDED AT", "DATA")
			}
			for e, err := range store.ReadStream(cmd.Context(), argv[0], from) {
				if err != nil {
					return err
				}
				if a.json {
					events = append(events, toEventJSON(e))
				} else {
					row(w, e.StreamVersion, e.Position, e.Type, e.RecordedAt.UTC().Format(time.RFC3339Nano), string(e.Data))
				}
				if limit > 0 && e.StreamVersion-max(from, 1)+1 >= limit {
					break
				}
			}
			if a.json {
				return a.printJSON(events)
			}
			return w.Flush()
		},
	}
	cmd.Flags().Int64Var(&from, "from", 1, "the first version to print")
	cmd.Flags().Int64Var(&limit, "limit", 0, "print at most this many events (0: all)")
	return cmd
}

func (a *app) streamCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stream STREAM",
		Short: "Show a stream's version and its first and last events",
		Long: `Show STREAM's version and its first and last events. A stream without
events is not found (exit code 5).

JSON (--json): {"stream_id": "order-42", "version": 3, "first": EVENT, "last": EVENT},
each EVENT as in ` + "`conduit read --help`.",
		Example: `  conduit stream order-42
  conduit stream order-42 --json | jq .version`,
		Args: args(1, 1),
		RunE: func(cmd *cobra.Command, argv []string) error {
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			ctx, id := cmd.Context(), argv[0]
			version, err := store.StreamVersion(ctx, id)
			if err != nil {
				return err
			}
			if version == 0 {
				return &exitError{code: ExitNotFound, err: fmt.Errorf("stream %q has no events", id)}
			}
			first, err := oneEvent(ctx, store, id, 1)
			if err != nil {
				return err
			}
			last, err := oneEvent(ctx, store, id, version)
			if err != nil {
				return err
			}
			out := streamJSON{StreamID: id, Version: version, First: first, Last: last}
			if a.json {
				return a.printJSON(out)
			}
			w := a.table()
			row(w, "stream", id)
			row(w, "version", version)
			for _, e := range []struct {
				label string
				e     *eventJSON
			}{{"first", first}, {"last", last}} {
				if e.e != nil {
					row(w, e.label, fmt.Sprintf("v%d  %s  %s  %s  %s", e.e.Version, e.e.Position, e.e.Type,
						e.e.RecordedAt.Format(time.RFC3339Nano), e.e.Data))
				}
			}
			return w.Flush()
		},
	}
}

// oneEvent reads the stream's event at version, nil if there is none.
func oneEvent(ctx context.Context, store *conduit.Store, id string, version int64) (*eventJSON, error) {
	for e, err := range store.ReadStream(ctx, id, version) {
		if err != nil {
			return nil, err
		}
		j := toEventJSON(e)
		return &j, nil
	}
	return nil, nil
}

func (a *app) tailCommand() *cobra.Command {
	var (
		from     string
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Follow the global log, gap-safe, until Ctrl-C",
		Long: `Print the events of every stream as they commit, in the global log's
order, the way a projector reads them: only below the safe horizon, so an
event whose transaction commits late is printed late, never skipped. A
long-running write transaction anywhere in the cluster delays the output
until it ends (conduit doctor names it).

--from is where to start: end (default: after the last event below the
safe horizon, so events that commit from now on, and those of
transactions still open, which may commit before them in the log's
order), start (the whole log), or a position TRANSACTION/POSITION as
printed (that event excluded): resume where an earlier tail stopped.

It wakes on the library's notifications and polls every --interval as
well; it retries a lost connection. Ctrl-C ends it with exit code 0.

JSON (--json): one event per line,
` + eventJSONHelp,
		Example: `  conduit tail
  conduit tail --from start --json | jq -c 'select(.type == "order_placed")'
  conduit tail --from 742/1001`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			pos, err := a.tailStart(cmd.Context(), store, from)
			if err != nil {
				return err
			}
			return a.tail(cmd.Context(), store, pos, interval)
		},
	}
	cmd.Flags().StringVar(&from, "from", "end", "where to start: end, start, or a position TX/POS (after it)")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "how often to poll, besides notifications")
	return cmd
}

func (a *app) tailStart(ctx context.Context, store *conduit.Store, from string) (conduit.Position, error) {
	switch from {
	case "start":
		return conduit.Position{}, nil
	case "end":
		r, err := dbgen.New(store.Pool()).LogSafeHeadGet(ctx)
		if errors.Is(err, pgx.ErrNoRows) {
			return conduit.Position{}, nil
		}
		if err != nil {
			return conduit.Position{}, fmt.Errorf("head of the log: %w", err)
		}
		return conduit.Position{TransactionID: r.TransactionID, GlobalPosition: r.GlobalPosition}, nil
	}
	p, err := conduit.ParsePosition(from)
	if err != nil {
		return p, usageErrorf("--from: want end, start or TX/POS: %v", strings.TrimPrefix(err.Error(), "conduit: "))
	}
	return p, nil
}

// tail prints the log after pos until ctx ends.
func (a *app) tail(ctx context.Context, store *conduit.Store, pos conduit.Position, interval time.Duration) error {
	ctx, cancel := context.WithCancel(ctx)
	wake, stop := listen(ctx, store)
	defer stop()
	defer cancel()
	backoff := 100 * time.Millisecond
	enc := json.NewEncoder(a.out)
	for {
		var readErr error
		for e, err := range store.ReadAll(ctx, pos) {
			if err != nil {
				readErr = err
				break
			}
			if a.json {
				if err := enc.Encode(toEventJSON(e)); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(a.out, "%s  %s  %s@%d  %s  %s\n", e.Position, e.RecordedAt.UTC().Format(time.RFC3339Nano),
					e.StreamID, e.StreamVersion, e.Type, e.Data)
			}
			pos = e.Position
		}
		wait := interval
		switch {
		case ctx.Err() != nil:
			return nil
		case readErr != nil && !conduit.IsOutcomeUnknown(readErr):
			return readErr
		case readErr != nil:
			fmt.Fprintf(a.errOut, "conduit: tail: %v; retrying in %s\n", readErr, backoff)
			wait = backoff
			backoff = min(2*backoff, 10*time.Second)
		default:
			backoff = 100 * time.Millisecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// listen starts a goroutine that LISTENs on conduit.EventsChannel on a
// connection of its own and signals wake at each notification, until ctx
// ends; stop waits for it. Without LISTEN (behind PgBouncer in transaction
// mode, or once its connection broke) wake stays quiet: polling is the
// guarantee, notifications only a hint.
func listen(ctx context.Context, store *conduit.Store) (wake <-chan struct{}, stop func()) {
	ch := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := pgx.ConnectConfig(ctx, store.Pool().Config().ConnConfig.Copy())
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		if err := dbgen.New(conn).ListenEvents(ctx); err != nil {
			return
		}
		for {
			if _, err := conn.WaitForNotification(ctx); err != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch, func() { <-done }
}
