package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/uuid"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/conduit-es/conduit"
)

const projectionJSONHelp = `{"name": "order_totals", "state": "caught_up", "checkpoint": "742/1001",
"lag_events": 0, "lag_estimated": false, "lag_seconds": 0, "last_progress_at": "2026-11-30T18:00:00Z",
"stall_reason": "", "stalled_event_id": null, "failing_event_id": null,
"failed_attempts": 0, "last_error": "", "parked": 0, "owner": "host-1/…", "epoch": 3,
"lease_expires_at": "…", "events_applied": 1001, "rebuild_started_at": null, "paused_at": null,
"horizon": null | {"held_events": 2, "pid": 4242, "since": "…", "application": "psql", "query": "…"},
"online_rebuild": null | {"started_at": "…", "replayed": 412000, "events_per_second": 52000,
"seconds_left": 11 | null, "error": ""}}
state is one of running, caught_up, stalled, stopped, rebuilding, paused.`

func (a *app) projectionsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "projections",
		Aliases: []string{"projection"},
		Short:   "Status, rebuilds and parked events of asynchronous projections",
		Long: `Asynchronous projections, as conduit.projection_status() and the SQL
functions conduit.rebuild_projection, conduit.pause_projection,
conduit.resume_projection, conduit.retry_parked_event and
conduit.skip_parked_event show and change them: the command calls the same
functions as a user at a psql prompt. A projection is known once its
projector has run.`,
		Example: `  conduit projections list
  conduit projections status order_totals
  conduit projections rebuild order_totals --wait`,
	}
	cmd.AddCommand(a.projectionsListCommand(), a.projectionsStatusCommand(), a.projectionsRebuildCommand(),
		a.projectionsPauseCommand("pause"), a.projectionsPauseCommand("resume"),
		a.projectionsParkedCommand(), a.projectionsParkedActionCommand("retry"), a.projectionsParkedActionCommand("skip"))
	return cmd
}

func (a *app) projectionsListCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "One line per projection: state, checkpoint, lag, parked events",
		Long: `One line per projection that has run: state, checkpoint, lag in events
and in time, last progress and parked events.

JSON (--json): an array of projections, each
` + projectionJSONHelp,
		Example: `  conduit projections list
  conduit projections list --json | jq -r '.[] | select(.lag_events > 1000) | .name'`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			st, err := store.ProjectionStatuses(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(toProjectionsJSON(st))
			}
			if len(st) == 0 {
				fmt.Fprintln(a.errOut, "no projection has run on this database yet")
				return nil
			}
			w := a.table()
			row(w, "NAME", "STATE", "CHECKPOINT", "LAG EVENTS", "LAG", "LAST PROGRESS", "PARKED")
			for _, s := range st {
				row(w, s.Name, s.State, s.Checkpoint, s.LagEvents, duration(s.Lag), ago(s.LastProgress), s.Parked)
			}
			return w.Flush()
		},
		ValidArgsFunction: cobra.NoFileCompletions,
	}
}

func (a *app) projectionsStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status [NAME]",
		Short: "A projection's full status, with why it is stalled or lagging",
		Long: `The full status of projection NAME, or of every projection: checkpoint,
lag, lease, the event it fails on and its error, the stall reason, parked
events, and the transaction holding back the safe horizon when one does.
The same as SELECT * FROM conduit.projection_status(); at a psql prompt.

JSON (--json): one projection with NAME, else an array of them, each
` + projectionJSONHelp,
		Example: `  conduit projections status order_totals
  conduit projections status order_totals --json | jq .state`,
		Args:              args(0, 1),
		ValidArgsFunction: a.completeProjection,
		RunE: func(cmd *cobra.Command, argv []string) error {
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			var st []conduit.ProjectionStatus
			if len(argv) == 1 {
				s, err := store.ProjectionStatus(cmd.Context(), argv[0])
				if err != nil {
					return notFoundHint(err)
				}
				if a.json {
					return a.printJSON(toProjectionJSON(s))
				}
				st = []conduit.ProjectionStatus{s}
			} else if st, err = store.ProjectionStatuses(cmd.Context()); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(toProjectionsJSON(st))
			}
			for i, s := range st {
				if i > 0 {
					fmt.Fprintln(a.out)
				}
				a.printStatus(s)
			}
			return nil
		},
	}
}

func notFoundHint(err error) error {
	if errors.Is(err, conduit.ErrNotFound) {
		return withHint(err, "`conduit projections list` shows the projections whose projector has run")
	}
	return err
}

// printStatus prints one projection's status for people.
func (a *app) printStatus(s conduit.ProjectionStatus) {
	w := a.table()
	row(w, "projection", s.Name)
	row(w, "state", s.State)
	row(w, "checkpoint", s.Checkpoint)
	lag := fmt.Sprintf("%d events, %s", s.LagEvents, duration(s.Lag))
	if s.LagEstimated {
		lag = fmt.Sprintf("about %d events (estimated), the oldest %s old", s.LagEvents, duration(s.Lag))
	}
	row(w, "lag", lag)
	row(w, "last progress", ago(s.LastProgress))
	row(w, "events applied", s.EventsApplied)
	if !s.RebuildStarted.IsZero() {
		row(w, "rebuild started", ago(s.RebuildStarted))
	}
	if !s.PausedAt.IsZero() {
		row(w, "paused", fmt.Sprintf("since %s: `conduit projections resume %s`", ago(s.PausedAt), s.Name))
	}
	if s.Owner != "" {
		row(w, "owner", fmt.Sprintf("%s (epoch %d, lease expires in %s)", s.Owner, s.Epoch, duration(time.Until(s.LeaseExpires))))
	} else {
		row(w, "owner", "none: no projector instance holds the lease")
	}
	if s.StallReason != "" {
		row(w, "stalled at", fmt.Sprintf("event %s: %s", s.StalledEventID, oneLine(s.StallReason, 200)))
	}
	if s.FailingEventID != uuid.Nil {
		row(w, "failing", fmt.Sprintf("event %s, %d attempt(s): %s", s.FailingEventID, s.FailedAttempts, oneLine(s.LastError, 200)))
	}
	row(w, "parked", s.Parked)
	if o := s.OnlineRebuild; o != nil {
		left := "?"
		if o.Left >= 0 {
			left = duration(o.Left)
		}
		row(w, "online rebuild", fmt.Sprintf("started %s, %d events replayed, %.0f events/s, %s left", ago(o.Started), o.Replayed, o.EventsPerSecond, left))
		if o.Error != "" {
			row(w, "online rebuild fails", oneLine(o.Error, 200))
		}
	}
	if h := s.Horizon; h != nil {
		row(w, "held back by", fmt.Sprintf("pid %d (%s), transaction open since %s, holding %d event(s): %s",
			h.PID, orDash(h.Application), ago(h.Since), h.HeldEvents, oneLine(h.Query, 120)))
	}
	w.Flush()
}

// completeProjection completes a projection name from the database, when
// the connection works without a prompt.
func (a *app) completeProjection(cmd *cobra.Command, argv []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(argv) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	store, err := a.storeFor(cmd)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 3*time.Second)
	defer cancel()
	st, err := store.ProjectionStatuses(ctx)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	names := make([]string, len(st))
	for i, s := range st {
		names[i] = s.Name
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

func (a *app) projectionsRebuildCommand() *cobra.Command {
	var (
		wait, noWait, online bool
		interval             time.Duration
	)
	cmd := &cobra.Command{
		Use:   "rebuild NAME",
		Short: "Rebuild a projection: truncate its read tables and replay the log, or (--online) swap in a replayed copy",
		Long: `Rebuild projection NAME by calling SELECT conduit.rebuild_projection('NAME'),
as a user at a psql prompt would: its read tables are truncated and its
checkpoint reset in one transaction (after any batch in flight), and the
running projector replays the log from the start.

In a terminal it then follows the replay with a progress bar (events/s and
time left) until the projection has caught up; Ctrl-C stops following, not
the rebuild. Elsewhere it returns at once, unless --wait: then it prints a
plain progress line every --interval until caught up. A replay that
stalls on a poison event ends the wait with exit code 1.

With --online it calls SELECT conduit.rebuild_projection_online('NAME')
instead: the running projector replays the log into shadow copies of the
read tables (schema conduit_shadow) while the live tables keep serving
readers, then swaps the copies in, in one short transaction (readers wait
100ms at most). It is refused at once, with exit code 1 and the reason,
when a read table cannot be swapped soundly (a view or foreign key on it,
a trigger, a role that does not own it: see README). Following it, the
progress counts the events replayed into the copies, until the swap; a
shadow batch that fails (retried by the projector) ends the wait with exit
code 1.

JSON (--json): the projection's status once done (after the replay with
--wait), as in ` + "`conduit projections status --help`" + `; during an online
rebuild its "online_rebuild" shows the progress.`,
		Example: `  conduit projections rebuild order_totals
  conduit projections rebuild order_totals --wait --interval 5s   # in CI or a script
  conduit projections rebuild order_totals --online --wait        # readers keep the old tables until the swap`,
		Args:              args(1, 1),
		ValidArgsFunction: a.completeProjection,
		RunE: func(cmd *cobra.Command, argv []string) error {
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			ctx, name := cmd.Context(), argv[0]
			if online {
				err = store.RebuildProjectionOnline(ctx, name)
			} else {
				err = store.RebuildProjection(ctx, name)
			}
			if errors.Is(err, conduit.ErrCannotRebuildOnline) {
				return withHint(err, "`conduit projections rebuild "+name+"` (without --online) truncates and replays instead")
			}
			if err != nil {
				return notFoundHint(err)
			}
			bar := isTerminal(a.errOut)
			follow := wait || (bar && !noWait && !a.json)
			if !a.json {
				if online {
					fmt.Fprintf(a.errOut, "online rebuild of %s started: replaying into shadow tables; readers keep the live ones until the swap\n", name)
				} else {
					fmt.Fprintf(a.errOut, "rebuild of %s started: read tables truncated, checkpoint reset\n", name)
				}
			}
			var st conduit.ProjectionStatus
			switch {
			case follow && online:
				st, err = a.followOnlineRebuild(ctx, store, name, interval, bar)
			case follow:
				st, err = a.followRebuild(ctx, store, name, interval, bar)
			default:
				st, err = store.ProjectionStatus(ctx, name)
			}
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(toProjectionJSON(st))
			}
			switch {
			case follow && online:
				fmt.Fprintf(a.out, "%s rebuilt online: shadow tables swapped in, state %s\n", name, st.State)
			case follow:
				fmt.Fprintf(a.out, "%s rebuilt: %d events applied, state %s\n", name, st.EventsApplied, st.State)
			case online:
				fmt.Fprintf(a.out, "%s: online rebuild under way; follow it with `conduit projections status %s`\n", name, name)
			default:
				fmt.Fprintf(a.out, "%s: %s, %d events to replay; follow it with `conduit projections status %s`\n",
					name, st.State, st.LagEvents, name)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "wait for the replay to catch up, printing progress")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "in a terminal, return at once instead of following the replay")
	cmd.Flags().BoolVar(&online, "online", false, "rebuild without downtime: replay into shadow tables, then swap them in")
	cmd.Flags().DurationVar(&interval, "interval", time.Second, "how often to read the progress")
	return cmd
}

// followRebuild polls the projection's status until its replay has caught
// up, showing progress on stderr: a progress bar in a terminal, else a
// plain line per poll that saw progress. It returns the last status; ctx
// ending stops following (the rebuild goes on) and returns ctx's error.
func (a *app) followRebuild(ctx context.Context, store *conduit.Store, name string, interval time.Duration, bar bool) (conduit.ProjectionStatus, error) {
	var (
		pb          *progressbar.ProgressBar
		total, done int64
		start       time.Time
		lastDone    = int64(-1)
		firstDone   = int64(-1) // applied before the first poll: not part of the rate
		warnedIdle  bool
	)
	for {
		st, err := store.ProjectionStatus(ctx, name)
		if err != nil {
			return st, err
		}
		if st.State == conduit.StateStalled {
			return st, fmt.Errorf("the replay of %s stalled: %s", name, oneLine(st.StallReason, 300))
		}
		// Done: the events applied since the rebuild reset the count; to
		// do: those after the checkpoint (the count and the checkpoint
		// move in one transaction, and the status reads both in one
		// statement). The total grows with appends during the replay.
		done = st.EventsApplied
		total = max(total, done+st.LagEvents)
		if firstDone < 0 {
			firstDone, start = done, time.Now()
		}
		finished := st.RebuildStarted.IsZero()
		if finished {
			done = total
		}
		if bar {
			if pb == nil {
				pb = newRebuildBar(a.errOut, name, total)
			}
			pb.ChangeMax64(max(total, 1))
			_ = pb.Set64(done) // a failed write to the terminal only loses a frame
		} else if done != lastDone || finished {
			elapsed := time.Since(start)
			rate := float64(done-firstDone) / max(elapsed.Seconds(), 0.001)
			left := "?"
			if rate > 0 {
				left = duration(time.Duration(float64(total-done) / rate * float64(time.Second)))
			}
			fmt.Fprintf(a.errOut, "rebuild %s: %d/%d events (%.0f%%), %.0f events/s, %s left\n",
				name, done, total, 100*float64(done)/float64(max(total, 1)), rate, left)
			lastDone = done
		}
		if finished {
			if pb != nil {
				_ = pb.Finish()
				fmt.Fprintln(a.errOut)
			}
			return st, nil
		}
		switch {
		case warnedIdle:
		case st.State == conduit.StateStopped:
			fmt.Fprintf(a.errOut, "no projector instance holds %s's lease: the replay starts when one runs\n", name)
			warnedIdle = true
		case st.State == conduit.StatePaused:
			fmt.Fprintf(a.errOut, "%s is paused: the replay starts when it is resumed (`conduit projections resume %s`)\n", name, name)
			warnedIdle = true
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return st, fmt.Errorf("stopped following the rebuild of %s (it goes on): %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// followOnlineRebuild polls the projection's status until its online
// rebuild has swapped the shadow tables in, showing the replay's progress
// on stderr as followRebuild does (the total is the events replayed plus
// the estimate of those left). A failed shadow batch ends it with an error
// (the projector goes on retrying).
func (a *app) followOnlineRebuild(ctx context.Context, store *conduit.Store, name string, interval time.Duration, bar bool) (conduit.ProjectionStatus, error) {
	var (
		pb         *progressbar.ProgressBar
		lastDone   = int64(-1)
		warnedIdle bool
	)
	for {
		st, err := store.ProjectionStatus(ctx, name)
		if err != nil {
			return st, err
		}
		o := st.OnlineRebuild
		if o == nil { // swapped in
			if pb != nil {
				_ = pb.Finish()
				fmt.Fprintln(a.errOut)
			}
			return st, nil
		}
		if o.Error != "" {
			return st, fmt.Errorf("the online rebuild of %s fails (the projector retries it): %s", name, oneLine(o.Error, 300))
		}
		left := "?"
		total := o.Replayed
		if o.Left >= 0 {
			left = duration(o.Left)
			total += int64(o.EventsPerSecond * o.Left.Seconds())
		}
		if bar {
			if pb == nil {
				pb = newRebuildBar(a.errOut, name, max(total, 1))
			}
			pb.ChangeMax64(max(total, o.Replayed, 1))
			_ = pb.Set64(o.Replayed)
		} else if o.Replayed != lastDone {
			fmt.Fprintf(a.errOut, "online rebuild %s: %d events replayed, %.0f events/s, %s left\n",
				name, o.Replayed, o.EventsPerSecond, left)
			lastDone = o.Replayed
		}
		switch {
		case warnedIdle:
		case st.State == conduit.StateStopped:
			fmt.Fprintf(a.errOut, "no projector instance holds %s's lease: the replay starts when one runs\n", name)
			warnedIdle = true
		case st.State == conduit.StatePaused:
			fmt.Fprintf(a.errOut, "%s is paused: the replay starts when it is resumed (`conduit projections resume %s`)\n", name, name)
			warnedIdle = true
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return st, fmt.Errorf("stopped following the online rebuild of %s (it goes on): %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

func newRebuildBar(w io.Writer, name string, total int64) *progressbar.ProgressBar {
	return progressbar.NewOptions64(max(total, 1),
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("rebuild "+name),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("events"),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionFullWidth(),
	)
}

func (a *app) projectionsPauseCommand(action string) *cobra.Command {
	short, long := "Pause a projection: it applies nothing until resumed",
		`Pause projection NAME by calling SELECT conduit.pause_projection('NAME'), as
a user at a psql prompt would. It waits for a batch in flight; once it
returns, no projector instance applies anything until the projection is
resumed. Instances keep running and keep their lease; status says paused,
and a rebuild of a paused projection waits for the resume to replay.`
	if action == "resume" {
		short, long = "Resume a paused projection",
			`Resume projection NAME by calling SELECT conduit.resume_projection('NAME'):
its running projector goes on from its checkpoint (woken at once).`
	}
	return &cobra.Command{
		Use:   action + " NAME",
		Short: short,
		Long: long + `

JSON (--json): the projection's status afterwards, as in ` + "`conduit projections status --help`.",
		Example:           "  conduit projections " + action + " order_totals",
		Args:              args(1, 1),
		ValidArgsFunction: a.completeProjection,
		RunE: func(cmd *cobra.Command, argv []string) error {
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			ctx, name := cmd.Context(), argv[0]
			if action == "resume" {
				err = store.ResumeProjection(ctx, name)
			} else {
				err = store.PauseProjection(ctx, name)
			}
			if err != nil {
				return notFoundHint(err)
			}
			st, err := store.ProjectionStatus(ctx, name)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(toProjectionJSON(st))
			}
			if action == "resume" {
				fmt.Fprintf(a.out, "%s resumed: %s, %d events to apply\n", name, st.State, st.LagEvents)
			} else {
				fmt.Fprintf(a.out, "%s paused at %s: it applies nothing until `conduit projections resume %s`\n",
					name, st.Checkpoint, name)
			}
			return nil
		},
	}
}

// parkedListJSONHelp documents `projections parked`.
const parkedListJSONHelp = `{"projection": "order_totals", "event_id": "0193…", "position": "742/1001",
"stream_id": "order-42", "version": 3, "type": "item_added", "error": "…", "attempts": 5,
"status": "parked", "parked_at": "…", "updated_at": "…"}
status is parked (waiting for a decision), retry (to be re-applied by the
next batch) or skipped.`

func (a *app) projectionsParkedCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "parked NAME",
		Short: "List a projection's parked events",
		Long: `List the events projection NAME parked (PoisonPark), in log order, with
their error and status. Retry one with ` + "`conduit projections retry NAME ID`" + `,
give up on it with ` + "`conduit projections skip NAME ID`" + `.

JSON (--json): an array of parked events, each
` + parkedListJSONHelp,
		Example: `  conduit projections parked order_totals
  conduit projections parked order_totals --json | jq -r '.[] | select(.status == "parked") | .event_id'`,
		Args:              args(1, 1),
		ValidArgsFunction: a.completeProjection,
		RunE: func(cmd *cobra.Command, argv []string) error {
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			if _, err := store.ProjectionStatus(cmd.Context(), argv[0]); err != nil {
				return notFoundHint(err)
			}
			parked, err := store.ParkedEvents(cmd.Context(), argv[0])
			if err != nil {
				return err
			}
			if a.json {
				out := make([]parkedJSON, len(parked))
				for i, p := range parked {
					out[i] = parkedJSON{Projection: p.Projection, EventID: p.EventID, Position: p.Position.String(),
						StreamID: p.StreamID, Version: p.StreamVersion, Type: p.Type, Error: p.Error, Attempts: p.Attempts,
						Status: p.Status, ParkedAt: p.ParkedAt.UTC(), UpdatedAt: p.Updated.UTC()}
				}
				return a.printJSON(out)
			}
			if len(parked) == 0 {
				fmt.Fprintf(a.errOut, "%s has no parked events\n", argv[0])
				return nil
			}
			w := a.table()
			row(w, "EVENT ID", "POSITION", "STREAM", "VERSION", "TYPE", "ATTEMPTS", "STATUS", "PARKED", "ERROR")
			for _, p := range parked {
				row(w, p.EventID, p.Position, p.StreamID, p.StreamVersion, p.Type, p.Attempts, p.Status, ago(p.ParkedAt),
					oneLine(p.Error, 80))
			}
			return w.Flush()
		},
	}
}

// parkedActionJSON is what `projections retry` and `projections skip` print.
type parkedActionJSON struct {
	Projection string    `json:"projection"`
	EventID    uuid.UUID `json:"event_id"`
	Status     string    `json:"status"`
}

func (a *app) projectionsParkedActionCommand(action string) *cobra.Command {
	short, long, status := "Re-apply a parked event in the projector's next batch",
		`Ask projection NAME's running projector to re-apply parked event ID in its
next batch: on success it leaves the parked list, on failure it is parked
again with the new error. SQL: SELECT conduit.retry_parked_event('NAME', 'ID');`, "retry"
	if action == "skip" {
		short, long, status = "Give up on a parked event for good",
			`Give up on parked event ID of projection NAME for good; it stays listed
as skipped. SQL: SELECT conduit.skip_parked_event('NAME', 'ID');`, "skipped"
	}
	return &cobra.Command{
		Use:   action + " NAME EVENT_ID",
		Short: short,
		Long: long + `
No such parked event: exit code 5.

JSON (--json): {"projection": "order_totals", "event_id": "0193…", "status": "` + status + `"}`,
		Example:           "  conduit projections " + action + " order_totals 0193a5c2-7d1e-7c3a-9f0e-1b2c3d4e5f60",
		Args:              args(2, 2),
		ValidArgsFunction: a.completeProjection,
		RunE: func(cmd *cobra.Command, argv []string) error {
			id, err := uuid.Parse(argv[1])
			if err != nil {
				return usageErrorf("event id %q: %v", argv[1], err)
			}
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			if action == "skip" {
				err = store.SkipParked(cmd.Context(), argv[0], id)
			} else {
				err = store.RetryParked(cmd.Context(), argv[0], id)
			}
			if errors.Is(err, conduit.ErrNotFound) {
				return withHint(err, fmt.Sprintf("`conduit projections parked %s` lists its parked events", argv[0]))
			}
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(parkedActionJSON{Projection: argv[0], EventID: id, Status: status})
			}
			if action == "skip" {
				fmt.Fprintf(a.out, "skipped event %s of %s for good\n", id, argv[0])
			} else {
				fmt.Fprintf(a.out, "event %s of %s will be retried in the projector's next batch\n", id, argv[0])
			}
			return nil
		},
	}
}
