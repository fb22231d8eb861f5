package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"golang.org/x/term"

	"github.com/conduit-es/conduit"
)

// The JSON values the commands print with --json. Field names are stable;
// new fields may be added. Times are RFC 3339 in UTC; absent times and ids
// are null.

// eventJSON is an event: `read` prints an array of them, `tail` one per
// line, `stream` its first and last.
type eventJSON struct {
	StreamID       string          `json:"stream_id"`
	Version        int64           `json:"version"`
	Position       string          `json:"position"`
	TransactionID  uint64          `json:"transaction_id"`
	GlobalPosition int64           `json:"global_position"`
	ID             uuid.UUID       `json:"id"`
	Type           string          `json:"type"`
	Data           json.RawMessage `json:"data"`
	Metadata       json.RawMessage `json:"metadata"`
	RecordedAt     time.Time       `json:"recorded_at"`
}

func toEventJSON(e conduit.Event) eventJSON {
	md := e.Metadata
	if len(md) == 0 {
		md = json.RawMessage("null")
	}
	return eventJSON{StreamID: e.StreamID, Version: e.StreamVersion, Position: e.Position.String(),
		TransactionID: e.Position.TransactionID, GlobalPosition: e.Position.GlobalPosition, ID: e.ID, Type: e.Type,
		Data: e.Data, Metadata: md, RecordedAt: e.RecordedAt.UTC()}
}

// projectionJSON is a projection's status: `projections list` and
// `projections status` print an array of them, `projections status NAME`
// and `projections rebuild` one.
type projectionJSON struct {
	Name             string       `json:"name"`
	State            string       `json:"state"`
	Checkpoint       string       `json:"checkpoint"`
	LagEvents        int64        `json:"lag_events"`
	LagEstimated     bool         `json:"lag_estimated"`
	LagSeconds       float64      `json:"lag_seconds"`
	LastProgressAt   *time.Time   `json:"last_progress_at"`
	StallReason      string       `json:"stall_reason"`
	StalledEventID   *uuid.UUID   `json:"stalled_event_id"`
	FailingEventID   *uuid.UUID   `json:"failing_event_id"`
	FailedAttempts   int          `json:"failed_attempts"`
	LastError        string       `json:"last_error"`
	Parked           int64        `json:"parked"`
	Owner            string       `json:"owner"`
	Epoch            int64        `json:"epoch"`
	LeaseExpiresAt   *time.Time   `json:"lease_expires_at"`
	EventsApplied    int64        `json:"events_applied"`
	RebuildStartedAt *time.Time   `json:"rebuild_started_at"`
	PausedAt         *time.Time   `json:"paused_at"`
	Horizon          *horizonJSON `json:"horizon"`
	// OnlineRebuild: an online rebuild's progress while one runs, else nil.
	OnlineRebuild *onlineRebuildJSON `json:"online_rebuild"`
}

// onlineRebuildJSON is the progress of an online rebuild.
type onlineRebuildJSON struct {
	StartedAt       time.Time `json:"started_at"`
	Replayed        int64     `json:"replayed"`
	EventsPerSecond float64   `json:"events_per_second"`
	SecondsLeft     *float64  `json:"seconds_left"`
	Error           string    `json:"error"`
}

// horizonJSON is the transaction holding back a projection's events.
type horizonJSON struct {
	HeldEvents  int64     `json:"held_events"`
	PID         int32     `json:"pid"`
	Since       time.Time `json:"since"`
	Application string    `json:"application"`
	Query       string    `json:"query"`
}

func toProjectionJSON(s conduit.ProjectionStatus) projectionJSON {
	p := projectionJSON{Name: s.Name, State: string(s.State), Checkpoint: s.Checkpoint.String(),
		LagEvents: s.LagEvents, LagEstimated: s.LagEstimated, LagSeconds: s.Lag.Seconds(), LastProgressAt: timePtr(s.LastProgress),
		StallReason: s.StallReason, StalledEventID: uuidPtr(s.StalledEventID), FailingEventID: uuidPtr(s.FailingEventID),
		FailedAttempts: s.FailedAttempts, LastError: s.LastError, Parked: s.Parked, Owner: s.Owner, Epoch: s.Epoch,
		LeaseExpiresAt: timePtr(s.LeaseExpires), EventsApplied: s.EventsApplied, RebuildStartedAt: timePtr(s.RebuildStarted),
		PausedAt: timePtr(s.PausedAt)}
	if o := s.OnlineRebuild; o != nil {
		p.OnlineRebuild = &onlineRebuildJSON{StartedAt: o.Started.UTC(), Replayed: o.Replayed,
			EventsPerSecond: o.EventsPerSecond, Error: o.Error}
		if o.Left >= 0 {
			left := o.Left.Seconds()
			p.OnlineRebuild.SecondsLeft = &left
		}
	}
	if h := s.Horizon; h != nil {
		p.Horizon = &horizonJSON{HeldEvents: h.HeldEvents, PID: h.PID, Since: h.Since.UTC(), Application: h.Application, Query: h.Query}
	}
	return p
}

func toProjectionsJSON(st []conduit.ProjectionStatus) []projectionJSON {
	out := make([]projectionJSON, len(st))
	for i, s := range st {
		out[i] = toProjectionJSON(s)
	}
	return out
}

// parkedJSON is a parked event: `projections parked NAME` prints an array.
type parkedJSON struct {
	Projection string    `json:"projection"`
	EventID    uuid.UUID `json:"event_id"`
	Position   string    `json:"position"`
	StreamID   string    `json:"stream_id"`
	Version    int64     `json:"version"`
	Type       string    `json:"type"`
	Error      string    `json:"error"`
	Attempts   int       `json:"attempts"`
	Status     string    `json:"status"`
	ParkedAt   time.Time `json:"parked_at"`
	UpdatedAt  time.Time `json:"updated_at"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func uuidPtr(id uuid.UUID) *uuid.UUID {
	if id == uuid.Nil {
		return nil
	}
	return &id
}

// printJSON prints v, indented, with a newline.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table returns a tabwriter for aligned columns on stdout; Flush it.
func (a *app) table() *tabwriter.Writer {
	return tabwriter.NewWriter(a.out, 0, 0, 2, ' ', 0)
}

// row writes one tab-separated row.
func row(w *tabwriter.Writer, cells ...any) {
	for i, c := range cells {
		if i > 0 {
			fmt.Fprint(w, "\t")
		}
		fmt.Fprint(w, c)
	}
	fmt.Fprintln(w)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// ago formats the time since t for people: "12s ago", "never".
func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return duration(time.Since(t)) + " ago"
}

// duration rounds d for people.
func duration(d time.Duration) string {
	switch {
	case d < 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	}
	return d.Round(time.Minute).String()
}

// byteSize formats a size for people.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// oneLine squeezes text onto one line of at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// orDash shows "-" for an empty cell.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
