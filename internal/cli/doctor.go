package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/dbgen"
)

// Check statuses in doctor's report.
const (
	checkOK   = "ok"
	checkWarn = "warn" // worth a look; not a failure
	checkFail = "fail" // the exit code is 3
	checkSkip = "skip" // could not run (say why)
)

// checkJSON is one of doctor's checks.
type checkJSON struct {
	Name    string   `json:"name"`
	Status  string   `json:"status"`
	Summary string   `json:"summary"`
	Details []string `json:"details"`
}

// relationJSON is a table or index of the conduit schema.
type relationJSON struct {
	Name        string `json:"name"`
	Kind        string `json:"kind"`
	Table       string `json:"table"`
	TotalBytes  int64  `json:"total_bytes"`
	RowEstimate int64  `json:"row_estimate"`
}

// doctorJSON is what doctor prints.
type doctorJSON struct {
	OK        bool           `json:"ok"`
	Checks    []checkJSON    `json:"checks"`
	Relations []relationJSON `json:"relations"`
}

type doctorOptions struct {
	maxLag, maxTransactionAge, maxIdleInTransaction time.Duration
	appRole                                         string
}

func (a *app) doctorCommand() *cobra.Command {
	var opt doctorOptions
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the event store's health; exit code 3 when something is wrong",
		Long: `Check the event store and report what is wrong and why, with exit code 3
when a check fails (a gate for a deploy), 0 otherwise:

  migrations           pending migrations, or a database newer than this conduit
  restored database    transaction ids below the stored ones (a logical restore)
  projections          stalled; lagging more than --max-lag, and why (no running
                       instance, a failing event, the horizon held back); parked
                       events, and paused and stopped projections, are warnings
  horizon              write transactions open longer than --max-transaction-age
                       anywhere in the cluster: the oldest holds back every reader
                       of the global log (pid, application, start, query)
  idle in transaction  sessions of this database idle inside a transaction
                       longer than --max-idle-in-transaction
  grants               with --app-role ROLE: what conduit.grant_application
                       gives that ROLE lacks, and what it must not hold

and the sizes of the conduit schema's tables and indexes. Run it as a
superuser or a role with pg_read_all_stats: other roles' sessions show
without their transaction and query otherwise.

JSON (--json): {"ok": false, "checks": [{"name": "migrations", "status": "fail",
"summary": "2 migration(s) pending", "details": ["run ` + "`conduit migrate up`" + `"]}, ...],
"relations": [{"name": "events", "kind": "table", "table": "", "total_bytes": 8192,
"row_estimate": 1000}, ...]}
status is ok, warn, fail or skip; kind is table or index.`,
		Example: `  conduit doctor
  conduit doctor --app-role conduit_app --max-lag 30s --json`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			store, err := a.storeFor(cmd)
			if err != nil {
				return err
			}
			report, err := doctor(cmd.Context(), store, opt)
			if err != nil {
				return err
			}
			if a.json {
				if err := a.printJSON(report); err != nil {
					return err
				}
			} else {
				a.printDoctor(report)
			}
			if !report.OK {
				failed := 0
				for _, c := range report.Checks {
					if c.Status == checkFail {
						failed++
					}
				}
				return &exitError{code: ExitCheckFailed, err: fmt.Errorf("doctor: %d check(s) failed", failed)}
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&opt.maxLag, "max-lag", time.Minute, "a projection whose oldest pending event is older is lagging")
	cmd.Flags().DurationVar(&opt.maxTransactionAge, "max-transaction-age", 5*time.Minute,
		"a write transaction open longer holds the horizon back")
	cmd.Flags().DurationVar(&opt.maxIdleInTransaction, "max-idle-in-transaction", time.Minute,
		"a session idle in a transaction longer is reported")
	cmd.Flags().StringVar(&opt.appRole, "app-role", "", "check the grants of this application role")
	return cmd
}

// doctor runs the checks. Only a failure to ask (the connection) is an
// error; what the answers show is in the report.
func doctor(ctx context.Context, store *conduit.Store, opt doctorOptions) (doctorJSON, error) {
	pool := store.Pool()
	q := dbgen.New(pool)
	var report doctorJSON
	add := func(c checkJSON) {
		if c.Details == nil {
			c.Details = []string{}
		}
		report.Checks = append(report.Checks, c)
	}

	migrations, schemaReady, err := checkMigrations(ctx, pool)
	if err != nil {
		return report, err
	}
	add(migrations)
	notReady := checkJSON{Status: checkSkip, Summary: "needs the migrations applied first"}
	if schemaReady {
		restored, err := checkRestored(ctx, q)
		if err != nil {
			return report, err
		}
		add(restored)
		projections, err := checkProjections(ctx, store, opt.maxLag)
		if err != nil {
			return report, err
		}
		add(projections)
	} else {
		notReady.Name = "restored database"
		add(notReady)
		notReady.Name = "projections"
		add(notReady)
	}
	horizon, err := checkHorizon(ctx, q, opt.maxTransactionAge)
	if err != nil {
		return report, err
	}
	add(horizon)
	idle, err := checkIdleInTransaction(ctx, q, opt.maxIdleInTransaction)
	if err != nil {
		return report, err
	}
	add(idle)
	switch {
	case opt.appRole == "":
		add(checkJSON{Name: "grants", Status: checkSkip, Summary: "pass --app-role ROLE to check the application role's grants"})
	case !schemaReady:
		notReady.Name = "grants"
		add(notReady)
	default:
		grants, err := checkGrants(ctx, q, opt.appRole)
		if err != nil {
			return report, err
		}
		add(grants)
	}

	sizes, err := q.RelationSizeList(ctx)
	if err != nil {
		return report, fmt.Errorf("table sizes: %w", err)
	}
	report.Relations = make([]relationJSON, len(sizes))
	for i, r := range sizes {
		report.Relations[i] = relationJSON{Name: r.Name, Kind: r.Kind, Table: r.TableName, TotalBytes: r.TotalBytes,
			RowEstimate: r.RowEstimate}
	}
	report.OK = true
	for _, c := range report.Checks {
		if c.Status == checkFail {
			report.OK = false
		}
	}
	return report, nil
}

// checkMigrations reports pending migrations; schemaReady says whether the
// schema is the one this conduit knows, so the other checks can run.
func checkMigrations(ctx context.Context, pool *pgxpool.Pool) (c checkJSON, schemaReady bool, err error) {
	st, err := migrationStatus(ctx, pool)
	if err != nil {
		return c, false, err
	}
	c.Name = "migrations"
	switch {
	case st.Current > st.Latest:
		c.Status, c.Summary = checkFail, fmt.Sprintf("the database is at version %d, newer than this conduit knows (%d)", st.Current, st.Latest)
		c.Details = []string{"upgrade the conduit command to the version that migrated the database"}
		return c, true, nil
	case st.Pending > 0:
		c.Status, c.Summary = checkFail, fmt.Sprintf("%d migration(s) pending: the database is at version %d, latest %d",
			st.Pending, st.Current, st.Latest)
		c.Details = []string{"run `conduit migrate up`"}
		return c, false, nil
	}
	c.Status, c.Summary = checkOK, fmt.Sprintf("at version %d, none pending", st.Current)
	return c, true, nil
}

func checkRestored(ctx context.Context, q *dbgen.Queries) (checkJSON, error) {
	r, err := q.TransactionIDsCheck(ctx)
	if err != nil {
		return checkJSON{}, fmt.Errorf("check transaction ids: %w", err)
	}
	c := checkJSON{Name: "restored database", Status: checkOK, Summary: "transaction ids are ahead of the stored ones"}
	if !r.Ok {
		c.Status = checkFail
		c.Summary = fmt.Sprintf("stored transaction id %d is above the server's next one (%d): restored from a logical dump",
			r.MaxStored, r.NextXid)
		c.Details = []string{"readers of the global log and projectors see nothing new until you run, as the schema's owner:",
			"SELECT conduit.rebase_transaction_ids();"}
	}
	return c, nil
}

func checkProjections(ctx context.Context, store *conduit.Store, maxLag time.Duration) (checkJSON, error) {
	st, err := store.ProjectionStatuses(ctx)
	if err != nil {
		return checkJSON{}, err
	}
	c := checkJSON{Name: "projections", Status: checkOK}
	worse := func(s string) {
		if s == checkFail || c.Status == checkOK {
			c.Status = s
		}
	}
	var failing, warned int
	for _, s := range st {
		var problems []string
		status := checkOK
		switch {
		case s.State == conduit.StateStalled:
			status = checkFail
			problems = append(problems, fmt.Sprintf("stalled at event %s: %s", s.StalledEventID, oneLine(s.StallReason, 200)),
				fmt.Sprintf("fix the projection and it retries by itself, or rebuild it (`conduit projections rebuild %s`)", s.Name))
		case s.LagEvents > 0 && s.Lag > maxLag && s.State != conduit.StatePaused:
			status = checkFail
			problems = append(problems, fmt.Sprintf("lagging: %d event(s), the oldest %s old (more than %s)",
				s.LagEvents, duration(s.Lag), maxLag)+lagReason(s))
		case s.State == conduit.StatePaused:
			status = checkWarn
			problems = append(problems, fmt.Sprintf("paused %s, %d event(s) behind: `conduit projections resume %s`",
				ago(s.PausedAt), s.LagEvents, s.Name))
		case s.State == conduit.StateStopped:
			status = checkWarn
			problems = append(problems, "stopped: no projector instance holds its lease")
		}
		if s.Parked > 0 {
			if status == checkOK {
				status = checkWarn
			}
			problems = append(problems, fmt.Sprintf("%d parked event(s): `conduit projections parked %s`", s.Parked, s.Name))
		}
		switch status {
		case checkFail:
			failing++
		case checkWarn:
			warned++
		}
		worse(status)
		for _, p := range problems {
			c.Details = append(c.Details, s.Name+": "+p)
		}
	}
	switch {
	case len(st) == 0:
		c.Summary = "no projection has run on this database"
	case failing > 0:
		c.Summary = fmt.Sprintf("%d of %d stalled or lagging", failing, len(st))
	case warned > 0:
		c.Summary = fmt.Sprintf("%d of %d need a look", warned, len(st))
	default:
		c.Summary = fmt.Sprintf("%d running within %s", len(st), maxLag)
	}
	return c, nil
}

// lagReason says why a projection lags, as far as its status tells.
func lagReason(s conduit.ProjectionStatus) string {
	switch {
	case s.Horizon != nil:
		h := s.Horizon
		return fmt.Sprintf("; held back by pid %d (%s), a transaction open since %s: %s", h.PID, orDash(h.Application),
			ago(h.Since), oneLine(h.Query, 120))
	case s.State == conduit.StateStopped:
		return "; no projector instance holds its lease (is one running?)"
	case s.FailedAttempts > 0:
		return fmt.Sprintf("; retrying event %s after %d failed attempt(s): %s", s.FailingEventID, s.FailedAttempts,
			oneLine(s.LastError, 200))
	case s.State == conduit.StateRebuilding:
		return "; replaying after a rebuild"
	}
	return "; applying more slowly than events arrive"
}

func checkHorizon(ctx context.Context, q *dbgen.Queries, maxAge time.Duration) (checkJSON, error) {
	rows, err := q.BackendListHoldingHorizon(ctx, maxAge.Seconds())
	if err != nil {
		return checkJSON{}, fmt.Errorf("sessions holding the horizon: %w", err)
	}
	c := checkJSON{Name: "horizon", Status: checkOK, Summary: fmt.Sprintf("no write transaction open longer than %s", maxAge)}
	if len(rows) == 0 {
		return c, nil
	}
	c.Status = checkFail
	c.Summary = fmt.Sprintf("pid %d has held the safe horizon back for %s: readers of the global log wait for it",
		rows[0].Pid, duration(time.Duration(rows[0].AgeSeconds*float64(time.Second))))
	for _, r := range rows {
		c.Details = append(c.Details, fmt.Sprintf("pid %d, database %s, user %s, application %s, %s, transaction started %s (%s ago): %s",
			r.Pid, orDash(r.Database), orDash(r.Username), orDash(r.Application), r.State, r.XactStart.UTC().Format(time.RFC3339),
			duration(time.Duration(r.AgeSeconds*float64(time.Second))), oneLine(r.Query, 200)))
	}
	c.Details = append(c.Details, "end it in its application, or SELECT pg_terminate_backend(PID);")
	return c, nil
}

func checkIdleInTransaction(ctx context.Context, q *dbgen.Queries, maxIdle time.Duration) (checkJSON, error) {
	rows, err := q.SessionListIdleInTransaction(ctx, maxIdle.Seconds())
	if err != nil {
		return checkJSON{}, fmt.Errorf("sessions idle in transaction: %w", err)
	}
	c := checkJSON{Name: "idle in transaction", Status: checkOK,
		Summary: fmt.Sprintf("no session idle in a transaction longer than %s", maxIdle)}
	if len(rows) == 0 {
		return c, nil
	}
	c.Status = checkFail
	c.Summary = fmt.Sprintf("%d session(s) idle in a transaction longer than %s", len(rows), maxIdle)
	for _, r := range rows {
		holds := ""
		if r.HoldsXid {
			holds = ", holding the safe horizon back"
		}
		c.Details = append(c.Details, fmt.Sprintf("pid %d, user %s, application %s, %s for %s%s; last statement: %s",
			r.Pid, orDash(r.Username), orDash(r.Application), r.State, duration(time.Duration(r.IdleSeconds*float64(time.Second))),
			holds, oneLine(r.Query, 200)))
	}
	c.Details = append(c.Details, "set idle_in_transaction_session_timeout for their role, or SELECT pg_terminate_backend(PID);")
	return c, nil
}

func checkGrants(ctx context.Context, q *dbgen.Queries, role string) (checkJSON, error) {
	c := checkJSON{Name: "grants"}
	exists, err := q.RoleExists(ctx, role)
	if err != nil {
		return c, fmt.Errorf("role %q: %w", role, err)
	}
	if !exists {
		c.Status, c.Summary = checkFail, fmt.Sprintf("role %q does not exist", role)
		return c, nil
	}
	rows, err := q.RoleGrantCheck(ctx, role)
	if err != nil {
		return c, fmt.Errorf("grants of %q: %w", role, err)
	}
	var missing, excess int
	for _, r := range rows {
		switch {
		case r.Want && !r.Granted:
			missing++
			c.Details = append(c.Details, fmt.Sprintf("missing: %s on %s", r.Privilege, r.Object))
		case !r.Want && r.Granted:
			excess++
			c.Details = append(c.Details, fmt.Sprintf("must not hold: %s on %s", r.Privilege, r.Object))
		}
	}
	c.Status, c.Summary = checkOK, fmt.Sprintf("%s holds what conduit.grant_application gives, and nothing it must not", role)
	if missing+excess > 0 {
		c.Status = checkFail
		c.Summary = fmt.Sprintf("%s lacks %d privilege(s) and holds %d it must not", role, missing, excess)
		if missing > 0 {
			c.Details = append(c.Details, fmt.Sprintf("as the schema's owner: SELECT conduit.grant_application('%s');", role))
		}
		if excess > 0 {
			c.Details = append(c.Details, fmt.Sprintf("as the schema's owner: SELECT conduit.revoke_application('%s'); "+
				"then SELECT conduit.grant_application('%s'); (a superuser role holds everything: connect as another)", role, role))
		}
	}
	return c, nil
}

func (a *app) printDoctor(r doctorJSON) {
	w := a.table()
	row(w, "CHECK", "STATUS", "SUMMARY")
	for _, c := range r.Checks {
		row(w, c.Name, c.Status, c.Summary)
	}
	w.Flush()
	for _, c := range r.Checks {
		if len(c.Details) == 0 {
			continue
		}
		fmt.Fprintf(a.out, "\n%s:\n", c.Name)
		for _, d := range c.Details {
			fmt.Fprintf(a.out, "  %s\n", d)
		}
	}
	if len(r.Relations) > 0 {
		fmt.Fprintln(a.out)
		w = a.table()
		row(w, "RELATION", "KIND", "TABLE", "SIZE", "ROWS (ESTIMATE)")
		for _, rel := range r.Relations {
			rows := "-"
			if rel.Kind == "table" && rel.RowEstimate >= 0 {
				rows = fmt.Sprint(rel.RowEstimate)
			}
			row(w, "conduit."+rel.Name, rel.Kind, orDash(rel.Table), byteSize(rel.TotalBytes), rows)
		}
		w.Flush()
	}
}
