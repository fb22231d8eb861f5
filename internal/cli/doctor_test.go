package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/dbgen"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// check returns the named check of a report, failing the test without it.
func check(t *testing.T, r doctorJSON, name string) checkJSON {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("doctor: no check %q in %+v", name, r)
	return checkJSON{}
}

func TestDoctorHealthy(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	appendEvents(t, store, "a", "placed", 3)
	runProjector(t, store, "healthy", &conduit.ProjectorConfig{PollInterval: 20 * time.Millisecond})
	waitState(t, store, "healthy", conduit.StateCaughtUp)

	rep := decode[doctorJSON](t, mustRun(t, ExitOK, url, "", "doctor", "--json"))
	if !rep.OK {
		t.Fatalf("doctor on a healthy database: %+v", rep)
	}
	for name, status := range map[string]string{"migrations": checkOK, "restored database": checkOK, "projections": checkOK,
		"grants": checkSkip} {
		if c := check(t, rep, name); c.Status != status {
			t.Errorf("check %s: %+v, want %s", name, c, status)
		}
	}
	var events bool
	for _, rel := range rep.Relations {
		events = events || (rel.Name == "events" && rel.Kind == "table" && rel.TotalBytes > 0)
	}
	if !events {
		t.Fatalf("relations without conduit.events: %+v", rep.Relations)
	}
	r := mustRun(t, ExitOK, url, "", "doctor")
	if !strings.Contains(r.stdout, "migrations           ok") || !strings.Contains(r.stdout, "conduit.events ") {
		t.Fatalf("doctor:\n%s", r)
	}
}

func TestDoctorPendingMigrations(t *testing.T) {
	t.Parallel()
	url := emptyDatabase(t)
	r := mustRun(t, ExitCheckFailed, url, "", "doctor")
	if !strings.Contains(r.stdout, "run `conduit migrate up`") || !strings.Contains(r.stderr, "check(s) failed") {
		t.Fatalf("doctor on an empty database:\n%s", r)
	}
	rep := decode[doctorJSON](t, mustRun(t, ExitCheckFailed, url, "", "doctor", "--json", "--app-role", "postgres"))
	if c := check(t, rep, "migrations"); c.Status != checkFail || !strings.Contains(c.Summary, "pending") {
		t.Fatalf("migrations check: %+v", c)
	}
	for _, name := range []string{"projections", "restored database", "grants"} {
		if c := check(t, rep, name); c.Status != checkSkip {
			t.Fatalf("check %s without the schema: %+v", name, c)
		}
	}
}

func TestDoctorStalledProjection(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	appendEvents(t, store, "a", "poison", 1)
	runProjector(t, store, "stuck", &conduit.ProjectorConfig{MaxAttempts: 1, RetryBackoff: time.Millisecond,
		PollInterval: 20 * time.Millisecond, StalledRetryInterval: time.Hour})
	waitState(t, store, "stuck", conduit.StateStalled)
	rep := decode[doctorJSON](t, mustRun(t, ExitCheckFailed, url, "", "doctor", "--json"))
	c := check(t, rep, "projections")
	if c.Status != checkFail || len(c.Details) == 0 || !strings.Contains(c.Details[0], "stuck: stalled at event") ||
		!strings.Contains(c.Details[0], "cannot digest a") {
		t.Fatalf("projections check: %+v", c)
	}
	r := mustRun(t, ExitOK, url, "", "projections", "status", "stuck")
	if !strings.Contains(r.stdout, "stalled at") || !strings.Contains(r.stdout, "cannot digest a") {
		t.Fatalf("status of a stalled projection:\n%s", r)
	}
}

// An open write transaction holds the horizon: a projector lags behind
// it, and doctor names its pid as the reason, as the holder of the
// horizon, and, while it idles, as idle in transaction.
func TestDoctorHeldHorizon(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	ctx := testContext(t)
	runProjector(t, store, "held", &conduit.ProjectorConfig{PollInterval: 20 * time.Millisecond})
	waitState(t, store, "held", conduit.StateCaughtUp)

	holder, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(context.Background())
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // the test ends here
	if _, err := store.AppendTx(ctx, tx, "held-back", conduit.Any, mustEvent(t, "open")); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(int(holder.PgConn().PID()))
	appendEvents(t, store, "behind", "placed", 1)
	eventually(t, "the projection to see the held events", func() bool {
		st, err := store.ProjectionStatus(ctx, "held")
		return err == nil && st.Horizon != nil && st.Horizon.HeldEvents > 0
	})

	rep := decode[doctorJSON](t, mustRun(t, ExitCheckFailed, url, "", "doctor", "--json", "--max-lag", "0s",
		"--max-transaction-age", "0s", "--max-idle-in-transaction", "0s"))
	p := check(t, rep, "projections")
	if p.Status != checkFail || !slices.ContainsFunc(p.Details, func(d string) bool {
		// The oldest write transaction of the cluster: ours, or another
		// test's that began earlier.
		return strings.Contains(d, "held: lagging") && strings.Contains(d, "held back by pid ")
	}) {
		t.Fatalf("projections check: %+v (holder pid %s)", p, pid)
	}
	h := check(t, rep, "horizon")
	if h.Status != checkFail || !slices.ContainsFunc(h.Details, func(d string) bool {
		return strings.HasPrefix(d, "pid "+pid+",") && strings.Contains(d, "transaction started")
	}) {
		t.Fatalf("horizon check: %+v (holder pid %s)", h, pid)
	}
	i := check(t, rep, "idle in transaction")
	if i.Status != checkFail || !slices.ContainsFunc(i.Details, func(d string) bool {
		return strings.HasPrefix(d, "pid "+pid+",") && strings.Contains(d, "holding the safe horizon back")
	}) {
		t.Fatalf("idle in transaction check: %+v (holder pid %s)", i, pid)
	}
	// The projection's own status names the holder too.
	r := mustRun(t, ExitOK, url, "", "projections", "status", "held")
	if !regexp.MustCompile(`held back by\s+pid \d+ `).MatchString(r.stdout) {
		t.Fatalf("status:\n%s", r)
	}
}

func TestDoctorRestoredDatabase(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	appendEvents(t, store, "a", "placed", 2)
	ctx := testContext(t)
	// What a logical restore into another cluster looks like: stored ids
	// far above the server's (restore_test.go does the same).
	for _, sql := range []string{
		`ALTER TABLE conduit.events DISABLE TRIGGER events_immutable`,
		`UPDATE conduit.events SET transaction_id = (transaction_id::text::bigint + 1000000000)::text::xid8`,
		`ALTER TABLE conduit.events ENABLE TRIGGER events_immutable`,
	} {
		if _, err := store.Pool().Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	rep := decode[doctorJSON](t, mustRun(t, ExitCheckFailed, url, "", "doctor", "--json"))
	c := check(t, rep, "restored database")
	if c.Status != checkFail || !slices.Contains(c.Details, "SELECT conduit.rebase_transaction_ids();") {
		t.Fatalf("restored database check: %+v", c)
	}
	r := mustRun(t, ExitError, url, "", "tail", "--from", "start")
	if !strings.Contains(r.stderr, "rebase_transaction_ids") {
		t.Fatalf("tail on a restored database:\n%s", r)
	}
}

// newRole creates a role, dropped when the test ends (roles are the
// cluster's: the name is unique).
func newRole(t *testing.T, url string) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	role := "conduit_cli_app_" + hex.EncodeToString(b)
	admin := pgtest.Connect(t, url)
	id := pgx.Identifier{role}.Sanitize()
	if _, err := admin.Exec(testContext(t), "CREATE ROLE "+id); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, sql := range []string{"DROP OWNED BY " + id, "DROP ROLE " + id} {
			if _, err := admin.Exec(ctx, sql); err != nil {
				t.Errorf("cleanup: %s: %v", sql, err)
			}
		}
	})
	return role
}

func TestDoctorGrants(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	ctx := testContext(t)
	role := newRole(t, url)

	rep := decode[doctorJSON](t, mustRun(t, ExitCheckFailed, url, "", "doctor", "--json", "--app-role", role))
	if c := check(t, rep, "grants"); c.Status != checkFail || !slices.Contains(c.Details, "missing: USAGE on conduit") ||
		!slices.Contains(c.Details, "as the schema's owner: SELECT conduit.grant_application('"+role+"');") {
		t.Fatalf("grants of a bare role: %+v", c)
	}
	if _, err := store.Pool().Exec(ctx, "SELECT conduit.grant_application($1)", role); err != nil {
		t.Fatal(err)
	}
	rep = decode[doctorJSON](t, mustRun(t, ExitOK, url, "", "doctor", "--json", "--app-role", role))
	if c := check(t, rep, "grants"); c.Status != checkOK || len(c.Details) != 0 {
		t.Fatalf("grants after grant_application: %+v", c)
	}
	// Two missing, one too many.
	id := pgx.Identifier{role}.Sanitize()
	for _, sql := range []string{
		"REVOKE EXECUTE ON FUNCTION conduit.rebuild_projection(text) FROM " + id,
		"REVOKE INSERT (generation) ON conduit.outbox FROM " + id,
		"GRANT UPDATE ON conduit.events TO " + id,
	} {
		if _, err := store.Pool().Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	rep = decode[doctorJSON](t, mustRun(t, ExitCheckFailed, url, "", "doctor", "--json", "--app-role", role))
	c := check(t, rep, "grants")
	if c.Status != checkFail || !slices.Contains(c.Details, "missing: EXECUTE on conduit.rebuild_projection(text)") ||
		!slices.Contains(c.Details, "missing: INSERT on conduit.outbox.generation") ||
		!slices.Contains(c.Details, "must not hold: UPDATE on conduit.events") {
		t.Fatalf("grants with two missing and one too many: %+v", c)
	}
	rep = decode[doctorJSON](t, mustRun(t, ExitCheckFailed, url, "", "doctor", "--json", "--app-role", "no_such_role_at_all"))
	if c := check(t, rep, "grants"); c.Status != checkFail || !strings.Contains(c.Summary, "does not exist") {
		t.Fatalf("grants of a missing role: %+v", c)
	}
}

// doctor's list of what the application role needs stays in step with
// conduit.grant_application: every privilege it grants is in the list.
func TestDoctorGrantListMatchesGrantApplication(t *testing.T) {
	t.Parallel()
	url, store := migratedDatabase(t)
	ctx := testContext(t)
	role := newRole(t, url)
	if _, err := store.Pool().Exec(ctx, "SELECT conduit.grant_application($1)", role); err != nil {
		t.Fatal(err)
	}
	rows, err := store.Pool().Query(ctx, `
		SELECT 'function', p.oid::regprocedure::text, a.privilege_type
		  FROM pg_proc p, aclexplode(p.proacl) a
		 WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)
		UNION ALL
		SELECT 'table', c.oid::regclass::text, a.privilege_type
		  FROM pg_class c, aclexplode(c.relacl) a
		 WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)
		UNION ALL
		SELECT 'column', att.attname::text, a.privilege_type
		  FROM pg_attribute att, aclexplode(att.attacl) a
		 WHERE att.attrelid = 'conduit.events'::regclass
		   AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)
		UNION ALL
		SELECT 'outbox column', 'conduit.outbox.' || att.attname, a.privilege_type
		  FROM pg_attribute att, aclexplode(att.attacl) a
		 WHERE att.attrelid = 'conduit.outbox'::regclass
		   AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)
		UNION ALL
		SELECT 'schema', n.nspname::text, a.privilege_type
		  FROM pg_namespace n, aclexplode(n.nspacl) a
		 WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)`, role)
	if err != nil {
		t.Fatal(err)
	}
	granted, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var kind, object, privilege string
		err := r.Scan(&kind, &object, &privilege)
		return privilege + " on " + strings.ReplaceAll(object, " ", ""), err
	})
	if err != nil {
		t.Fatal(err)
	}
	checks, err := dbgen.New(store.Pool()).RoleGrantCheck(ctx, role)
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, c := range checks {
		if c.Want {
			listed = append(listed, c.Privilege+" on "+strings.ReplaceAll(strings.TrimPrefix(c.Object, "conduit.events."), " ", ""))
		}
	}
	for _, g := range granted {
		if !slices.Contains(listed, g) {
			t.Errorf("grant_application grants %s; doctor's list (db/queries/doctor.sql) lacks it", g)
		}
	}
	if len(granted) != len(listed) {
		t.Errorf("grant_application grants %d privileges, doctor checks %d:\n%v\n%v", len(granted), len(listed), granted, listed)
	}
}
