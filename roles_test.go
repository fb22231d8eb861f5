package conduit_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// roles is a fresh database set up as README's "Privileges" says: its
// scripts run as written (role and database names aside), the migrations
// run as the owner, and the owner creates the read tables shop.orders and
// shop.order_totals.
type roles struct {
	owner, app, reporting          string // role names, unique to the test
	admin                          *pgxpool.Pool
	ownerPool, appPool, reportPool *pgxpool.Pool
	store                          *conduit.Store // on appPool
}

// readmeRoles are the names README's scripts use.
var readmeRoles = []string{"conduit_owner", "conduit_app", "conduit_reporting"}

func newRoles(t *testing.T) *roles {
	t.Helper()
	ctx := testContext(t)
	noop := func(context.Context, *pgxpool.Pool) error { return nil }
	db := pgtest.NewDB(t, fstest.MapFS{}, noop)
	url := pgtest.URLFor(t, db)
	r := &roles{admin: pgtest.Connect(t, url)}

	// Roles are the cluster's, not the database's: unique names, dropped
	// (with their privileges in this database) before the database is.
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	suffix := "_" + hex.EncodeToString(b)
	r.owner, r.app, r.reporting = readmeRoles[0]+suffix, readmeRoles[1]+suffix, readmeRoles[2]+suffix
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, role := range []string{r.reporting, r.app, r.owner} {
			id := pgx.Identifier{role}.Sanitize()
			for _, sql := range []string{"DROP OWNED BY " + id, "DROP ROLE " + id} {
				if _, err := r.admin.Exec(ctx, sql); err != nil {
					t.Errorf("cleanup: %s: %v", sql, err)
				}
			}
		}
	})

	scripts := readmePrivilegeScripts(t)
	rename := func(sql string) string {
		for i, role := range []string{r.owner, r.app, r.reporting} {
			sql = regexp.MustCompile(`\b`+readmeRoles[i]+`\b`).ReplaceAllString(sql, role)
		}
		return regexp.MustCompile(`\bmydb\b`).ReplaceAllString(sql, db)
	}
	run := func(pool *pgxpool.Pool, sql string) {
		t.Helper()
		// No arguments: the simple protocol, so a script's statements run in one go.
		if _, err := pool.Exec(ctx, rename(sql)); err != nil {
			t.Fatalf("README script:\n%s\n%v", rename(sql), err)
		}
	}

	run(r.admin, scripts[0]) // as a superuser: the roles
	// A password, for servers that do not trust local connections.
	password := hex.EncodeToString(b) + "-secret"
	for _, role := range []string{r.owner, r.app, r.reporting} {
		if _, err := r.admin.Exec(ctx, "ALTER ROLE "+pgx.Identifier{role}.Sanitize()+" PASSWORD '"+password+"'"); err != nil {
			t.Fatal(err)
		}
	}
	connectAs := func(role string) *pgxpool.Pool {
		t.Helper()
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ConnConfig.User, cfg.ConnConfig.Password = role, password
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		return pool
	}
	r.ownerPool = connectAs(r.owner)
	if err := conduit.Migrate(ctx, r.ownerPool); err != nil {
		t.Fatalf("Migrate as the owner: %v", err)
	}
	if _, err := r.ownerPool.Exec(ctx, `CREATE SCHEMA shop;
		CREATE TABLE shop.orders (event_id uuid PRIMARY KEY, stream_id text NOT NULL, version bigint NOT NULL);
		CREATE TABLE shop.order_totals (stream_id text PRIMARY KEY, total bigint NOT NULL)`); err != nil {
		t.Fatalf("the owner's read tables: %v", err)
	}
	run(r.ownerPool, scripts[1]) // as the owner: the application's grants
	run(r.admin, scripts[2])     // as a superuser: reporting

	r.appPool = connectAs(r.app)
	r.reportPool = connectAs(r.reporting)
	store, err := conduit.NewStore(r.appPool, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.store = store
	return r
}

// readmePrivilegeScripts returns the SQL blocks of README's "Privileges"
// section: as a superuser, as the owner, as a superuser.
func readmePrivilegeScripts(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Privileges\n")
	if !ok {
		t.Fatal(`README.md has no "## Privileges" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	blocks := regexp.MustCompile("(?s)```sql\n(.*?)```").FindAllStringSubmatch(section, -1)
	if len(blocks) != 3 {
		t.Fatalf("README's Privileges section has %d SQL blocks, want 3 (superuser, owner, superuser)", len(blocks))
	}
	return []string{blocks[0][1], blocks[1][1], blocks[2][1]}
}

// orders records each event it applies in shop.orders.
type orders struct {
	name   string
	tables []string
	fail   func(conduit.Event) error
}

func (o *orders) Name() string { return o.name }

func (o *orders) ReadTables() []string {
	if o.tables != nil {
		return o.tables
	}
	return []string{"shop.orders"}
}

func (o *orders) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	if o.fail != nil {
		if err := o.fail(e); err != nil {
			return err
		}
	}
	_, err := tx.Exec(ctx, `INSERT INTO shop.orders (event_id, stream_id, version) VALUES ($1, $2, $3)`,
		e.ID, e.StreamID, e.StreamVersion)
	return err
}

func countRows(t *testing.T, pool *pgxpool.Pool, table string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

// sqlState returns err's SQLSTATE, or "" if it is not a server error.
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

const insufficientPrivilege = "42501"

// The application role appends and reads with every call of the store.
func TestApplicationRoleAppendsAndReads(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r := newRoles(t)
	store := r.store

	res, err := store.Append(ctx, "order-1", conduit.NoStream, mustEvent(t, "placed", 1), mustEvent(t, "paid", 2))
	if err != nil || res.Version != 2 {
		t.Fatalf("Append = %+v, %v", res, err)
	}
	if _, err := store.Append(ctx, "order-1", conduit.Exactly(1), mustEvent(t, "late", 3)); !errors.Is(err, conduit.ErrVersionConflict) {
		t.Fatalf("Append at a stale version = %v, want a version conflict", err)
	}
	retried := mustEvent(t, "shipped", 4)
	for range 2 { // the second is an idempotent retry: conduit.explain_append
		if res, err = store.Append(ctx, "order-1", conduit.Any, retried); err != nil || res.Version != 3 {
			t.Fatalf("Append = %+v, %v", res, err)
		}
	}
	if !res.Duplicate {
		t.Fatal("the retry was not recognized as a duplicate")
	}
	err = store.InTx(ctx, func(tx pgx.Tx) error {
		v, err := store.StreamVersionTx(ctx, tx, "order-1")
		if err != nil {
			return err
		}
		_, err = store.AppendTx(ctx, tx, "order-1", conduit.Exactly(v), mustEvent(t, "closed", 5))
		return err
	})
	if err != nil {
		t.Fatalf("AppendTx: %v", err)
	}
	// A synchronous projection that fails: AppendTx aborts the caller's
	// transaction (conduit.abort_transaction).
	failing, err := conduit.NewStore(r.appPool, &conduit.Config{Projections: []conduit.Projection{
		&orders{name: "sync", fail: func(conduit.Event) error { return errBoom }},
	}})
	if err != nil {
		t.Fatal(err)
	}
	err = failing.InTx(ctx, func(tx pgx.Tx) error {
		_, err := failing.AppendTx(ctx, tx, "order-2", conduit.NoStream, mustEvent(t, "placed", 1))
		return err
	})
	if !errors.Is(err, conduit.ErrProjection) {
		t.Fatalf("AppendTx with a failing projection = %v, want ErrProjection", err)
	}
	var status string
	err = r.appPool.QueryRow(ctx, `SELECT r_status FROM conduit.append_to_stream('order-3', -2,
		ARRAY[gen_random_uuid()], ARRAY['placed'], ARRAY['{}'], ARRAY[''])`).Scan(&status)
	if err != nil || status != "ok" {
		t.Fatalf("conduit.append_to_stream = %q, %v", status, err)
	}

	if v, err := store.StreamVersion(ctx, "order-1"); err != nil || v != 4 {
		t.Fatalf("StreamVersion = %d, %v", v, err)
	}
	if events := collect(t, store.ReadStream(ctx, "order-1", 1)); len(events) != 4 {
		t.Fatalf("ReadStream: %d events, want 4", len(events))
	}
	waitSettled(t, ctx, r.appPool)
	if events := collect(t, store.ReadAll(ctx, conduit.Position{})); len(events) != 5 {
		t.Fatalf("ReadAll: %d events, want 5", len(events))
	}
	if head, err := store.Head(ctx); err != nil || head.GlobalPosition == 0 {
		t.Fatalf("Head = %v, %v", head, err)
	}
}

// The application role's batches of appends enqueue their outbox rules'
// messages. Concurrent Appends go in one statement, the batch functions;
// conduit.append_batch_one_outbox names the generation its messages go to,
// which grant_application did not let the role choose: every such batch
// failed for want of a privilege and its appends were sent again one by
// one (each succeeding, so only the lost batching showed). The functions
// are called as the role, as a batch calls them; then the plainest user
// code, concurrent Appends under a rule, enqueues a message per append.
func TestApplicationRoleBatchesOutboxAppends(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r := newRoles(t)
	conn, err := r.appPool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	func() {
		defer conn.Release()
		for name, call := range batchFunctionCalls(t) {
			callBatchFunction(t, ctx, conn.Conn(), name, call, 0)
		}
	}()

	store, err := conduit.NewStore(r.appPool, &conduit.Config{Outbox: []conduit.OutboxRule{
		{EventType: "order_paid", Topic: "orders.paid"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	before, err := store.OutboxStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 10
	errs := make(chan error, writers)
	for w := range writers {
		go func() {
			var err error
			for i := 0; i < each && err == nil; i++ {
				_, err = store.Append(ctx, fmt.Sprintf("order-%d-%d", w, i), conduit.NoStream, mustEvent(t, "order_paid", i))
			}
			errs <- err
		}()
	}
	for range writers {
		if err := <-errs; err != nil {
			t.Fatalf("Append as the application role: %v", err)
		}
	}
	if st, err := store.OutboxStatus(ctx); err != nil || st.Pending != before.Pending+writers*each {
		t.Fatalf("outbox status %+v, %v; want %d pending", st, err, before.Pending+writers*each)
	}
}

// The application role runs projectors: Run with wake-ups, CatchUp,
// WaitFor, status, parked events, rebuild.
func TestApplicationRoleRunsProjectors(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r := newRoles(t)
	store := r.store

	var broken atomic.Bool
	broken.Store(true)
	p := newProjector(t, store, &orders{name: "orders", fail: func(e conduit.Event) error {
		if e.Type == "bad" && broken.Load() {
			return errBoom
		}
		return nil
	}}, &conduit.ProjectorConfig{Poison: conduit.PoisonPark, MaxAttempts: 1, RetryBackoff: time.Millisecond,
		PollInterval: 20 * time.Millisecond})
	appendN(t, store, "a", 2)
	bad := mustEvent(t, "bad", 1)
	if _, err := store.Append(ctx, "b", conduit.NoStream, bad); err != nil {
		t.Fatal(err)
	}
	if err := p.CatchUp(ctx); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	if n := countRows(t, r.appPool, "shop.orders"); n != 2 {
		t.Fatalf("shop.orders has %d rows, want 2 (the bad event parked)", n)
	}
	parked, err := store.ParkedEvents(ctx, "orders")
	if err != nil || len(parked) != 1 || parked[0].EventID != bad.ID {
		t.Fatalf("ParkedEvents = %+v, %v", parked, err)
	}

	stop := runProjector(t, p)
	broken.Store(false)
	if err := store.RetryParked(ctx, "orders", parked[0].EventID); err != nil {
		t.Fatalf("RetryParked: %v", err)
	}
	res := appendN(t, store, "c", 3)
	waitFor(t, store, "orders", res.Position)
	if n := countRows(t, r.appPool, "shop.orders"); n != 6 {
		t.Fatalf("shop.orders has %d rows, want 6", n)
	}
	st, err := store.ProjectionStatus(ctx, "orders")
	if err != nil || st.LagEvents != 0 || st.Parked != 0 || st.Owner != p.InstanceID() {
		t.Fatalf("ProjectionStatus = %+v, %v", st, err)
	}

	if err := store.RebuildProjection(ctx, "orders"); err != nil {
		t.Fatalf("RebuildProjection: %v", err)
	}
	waitFor(t, store, "orders", res.Position)
	if n := countRows(t, r.appPool, "shop.orders"); n != 6 {
		t.Fatalf("after the rebuild shop.orders has %d rows, want 6", n)
	}
	stop()

	broken.Store(true)
	if _, err := store.Append(ctx, "d", conduit.NoStream, mustEvent(t, "bad", 1)); err != nil {
		t.Fatal(err)
	}
	if err := p.CatchUp(ctx); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	parked, err = store.ParkedEvents(ctx, "orders")
	if err != nil || len(parked) != 1 {
		t.Fatalf("ParkedEvents = %+v, %v", parked, err)
	}
	if err := store.SkipParked(ctx, "orders", parked[0].EventID); err != nil {
		t.Fatalf("SkipParked: %v", err)
	}
}

// The application role cannot forge the log's order or clock: INSERT
// naming transaction_id, global_position or recorded_at is refused. A
// transaction id above the server's, 4000000000 say, would make every
// projector take the database for one restored from a dump, and refuse to
// run.
func TestApplicationRoleCannotForgeTheLog(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r := newRoles(t)
	appendN(t, r.store, "a", 1)
	for _, forged := range []struct{ column, value, overriding string }{
		{"transaction_id", "'4000000000'", ""},
		{"global_position", "4000000000", "OVERRIDING SYSTEM VALUE"},
		{"recorded_at", "'2000-01-01'", ""},
	} {
		_, err := r.appPool.Exec(ctx, `INSERT INTO conduit.events (`+forged.column+`, stream_id, stream_version, event_id, event_type, data)
			`+forged.overriding+` VALUES (`+forged.value+`, 'forged-'||gen_random_uuid(), 1, gen_random_uuid(), 'forged', '{}')`)
		if sqlState(err) == insufficientPrivilege {
			continue
		}
		catchUp := newProjector(t, r.store, &orders{name: "orders-" + forged.column}, nil).CatchUp(ctx)
		t.Errorf("INSERT with %s = %s: %v, want permission denied; a projector then says: %v",
			forged.column, forged.value, err, catchUp)
	}
}

// The application role's grants in the conduit schema, exactly. A change
// here is a change of README's "Privileges" section.
func TestApplicationRoleGrants(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r := newRoles(t)
	const want = `EXECUTE ON FUNCTION conduit.abort_transaction(text)
EXECUTE ON FUNCTION conduit.append_stream_lock(text)
EXECUTE ON FUNCTION conduit.append_to_stream(text,bigint,uuid[],text[],text[],text[])
EXECUTE ON FUNCTION conduit.append_verdict(bigint,bigint,xid8,xid8)
EXECUTE ON FUNCTION conduit.assert_transaction_ids()
EXECUTE ON FUNCTION conduit.check_outbox_transaction_ids()
EXECUTE ON FUNCTION conduit.check_transaction_ids()
EXECUTE ON FUNCTION conduit.copy_table_privileges(regclass,regclass)
EXECUTE ON FUNCTION conduit.discard_dead_letter(uuid)
EXECUTE ON FUNCTION conduit.explain_append(text,bigint,uuid[])
EXECUTE ON FUNCTION conduit.horizon_age()
EXECUTE ON FUNCTION conduit.outbox_current_generation()
EXECUTE ON FUNCTION conduit.outbox_retire(bigint)
EXECUTE ON FUNCTION conduit.outbox_status()
EXECUTE ON FUNCTION conduit.projection_status()
EXECUTE ON FUNCTION conduit.rebuild_projection(text)
EXECUTE ON FUNCTION conduit.rebuild_projection_online(text)
EXECUTE ON FUNCTION conduit.rebuild_projection_online_00009(text)
EXECUTE ON FUNCTION conduit.retry_dead_letter(uuid)
EXECUTE ON FUNCTION conduit.retry_parked_event(text,uuid)
EXECUTE ON FUNCTION conduit.skip_parked_event(text,uuid)
EXECUTE ON FUNCTION conduit.stream_head(text,boolean)
EXECUTE ON FUNCTION conduit.swap_shadow_tables(text)
EXECUTE ON FUNCTION conduit.swap_shadow_tables_00009(text)
INSERT (stream_id, stream_version, event_id, event_type, data, metadata) ON conduit.events
SELECT ON conduit.events
INSERT (generation, message_id, topic, key, payload, headers) ON conduit.outbox
SELECT ON conduit.outbox
DELETE ON conduit.outbox_dead
INSERT ON conduit.outbox_dead
SELECT ON conduit.outbox_dead
UPDATE ON conduit.outbox_dead
SELECT ON conduit.outbox_generation
USAGE ON conduit.outbox_position_seq
SELECT ON conduit.outbox_relay
UPDATE ON conduit.outbox_relay
DELETE ON conduit.parked_events
INSERT ON conduit.parked_events
SELECT ON conduit.parked_events
UPDATE ON conduit.parked_events
INSERT ON conduit.projections
SELECT ON conduit.projections
UPDATE ON conduit.projections
USAGE ON SCHEMA conduit`
	var got string
	err := r.admin.QueryRow(ctx, `
		SELECT string_agg(grant_, E'\n' ORDER BY on_, grant_) FROM (
			SELECT format('%s ON SCHEMA %s', a.privilege_type, n.nspname), 'schema'
			  FROM pg_namespace n, aclexplode(n.nspacl) a
			 WHERE n.nspname = 'conduit' AND a.grantee = $1::regrole
			UNION ALL
			SELECT format('%s ON %s', a.privilege_type, c.oid::regclass), c.oid::regclass::text
			  FROM pg_class c, aclexplode(c.relacl) a
			 WHERE c.relnamespace = 'conduit'::regnamespace AND a.grantee = $1::regrole
			UNION ALL
			SELECT format('%s (%s) ON %s', a.privilege_type, string_agg(att.attname, ', ' ORDER BY att.attnum), c.oid::regclass),
			       c.oid::regclass::text
			  FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid, aclexplode(att.attacl) a
			 WHERE c.relnamespace = 'conduit'::regnamespace AND a.grantee = $1::regrole
			 GROUP BY a.privilege_type, c.oid
			UNION ALL
			SELECT format('%s ON FUNCTION %s', a.privilege_type, p.oid::regprocedure), ''
			  FROM pg_proc p, aclexplode(p.proacl) a
			 WHERE p.pronamespace = 'conduit'::regnamespace AND a.grantee = $1::regrole) AS g(grant_, on_)`,
		r.app).Scan(&got)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("the application role's grants:\n%s\nwant:\n%s", got, want)
	}

	// Every table of the schema was thought about: the application uses it,
	// or it is the owner's alone. A table a later migration adds fails here
	// until grant_application (or this list) says which.
	// The outbox's generations are read and written through
	// conduit.outbox, and truncated by conduit.outbox_retire.
	ownerOnly := map[string]bool{"conduit.goose_db_version": true,
		"conduit.outbox_g0": true, "conduit.outbox_g1": true, "conduit.outbox_g2": true}
	rows, err := r.admin.Query(ctx, `SELECT c.oid::regclass::text FROM pg_class c
		WHERE c.relnamespace = 'conduit'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
		  AND NOT has_table_privilege($1, c.oid, 'SELECT') ORDER BY 1`, r.app)
	if err != nil {
		t.Fatal(err)
	}
	unreachable, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range unreachable {
		if !ownerOnly[table] {
			t.Errorf("%s: the application role cannot read it: grant what the library needs in conduit.grant_application, or list it as the owner's", table)
		}
	}
}

// Each thing the application role must not do is refused for want of a
// privilege (before any trigger): rewrite or drop events, touch the
// triggers, create in the schema, run the owner's functions, write tables
// it was not granted.
func TestApplicationRoleRefusals(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r := newRoles(t)
	appendN(t, r.store, "a", 1)
	// The owner's tables the application was not granted: one in a schema
	// of its own, one added to shop after the grants.
	if _, err := r.ownerPool.Exec(ctx, `CREATE SCHEMA audit; CREATE TABLE audit.log (line text);
		CREATE TABLE shop.refunds (stream_id text PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`UPDATE conduit.events SET data = '{}'`,
		`DELETE FROM conduit.events`,
		`TRUNCATE conduit.events`,
		`ALTER TABLE conduit.events DISABLE TRIGGER events_immutable`,
		`ALTER TABLE conduit.events DISABLE TRIGGER ALL`,
		`DROP TRIGGER events_immutable ON conduit.events`,
		`CREATE TRIGGER forged BEFORE INSERT ON conduit.events FOR EACH ROW EXECUTE FUNCTION conduit.refuse_event_change()`,
		`CREATE TABLE conduit.mine (a int)`,
		`CREATE FUNCTION conduit.mine() RETURNS int LANGUAGE sql AS 'SELECT 1'`,
		`SELECT nextval(pg_get_serial_sequence('conduit.events', 'global_position'))`,
		`DELETE FROM conduit.projections`,
		`TRUNCATE conduit.parked_events`,
		`SELECT * FROM conduit.goose_db_version`,
		`SELECT conduit.rebase_transaction_ids()`,
		`SELECT * FROM conduit.append_to_stream_00001('s', -1, ARRAY[gen_random_uuid()], ARRAY['t'], ARRAY['{}'], ARRAY[''])`,
		`SELECT conduit.grant_application(current_user)`,
		`SELECT conduit.revoke_application(current_user)`,
		`SELECT conduit.grant_reporting(current_user, '{shop.orders}')`,
		`INSERT INTO audit.log VALUES ('forged')`,
		`INSERT INTO shop.refunds VALUES ('order-1')`,
		`TRUNCATE shop.refunds`,
	} {
		if _, err := r.appPool.Exec(ctx, sql); sqlState(err) != insufficientPrivilege {
			t.Errorf("as the application: %s: %v, want permission denied (%s)", sql, err, insufficientPrivilege)
		}
	}

	// A rebuild truncates the tables a projection declares with the
	// caller's rights: the application cannot truncate others' tables with
	// it, and the refused rebuild changes nothing.
	p := newProjector(t, r.store, &orders{name: "orders", tables: []string{"shop.orders", "shop.refunds"}}, nil)
	if err := p.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.store.RebuildProjection(ctx, "orders"); sqlState(err) != insufficientPrivilege {
		t.Errorf("rebuilding a projection declaring shop.refunds: %v, want permission denied", err)
	}
	if n := countRows(t, r.appPool, "shop.orders"); n != 1 {
		t.Errorf("after the refused rebuild shop.orders has %d rows, want 1", n)
	}

	// The owner is not bound, as README says: it can disable the trigger
	// and rewrite events (rolled back here), and run the rebase.
	tx, err := r.ownerPool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `ALTER TABLE conduit.events DISABLE TRIGGER events_immutable;
		UPDATE conduit.events SET data = '{"rewritten": true}'`); err != nil {
		t.Errorf("as the owner: disable the trigger and rewrite: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ownerPool.Exec(ctx, `SELECT conduit.rebase_transaction_ids()`); err != nil {
		t.Errorf("as the owner: rebase_transaction_ids: %v", err)
	}
}

// The reporting role reads the read tables it was given, nothing else,
// writes nothing, and starts every transaction read-only, with its timeouts.
func TestReportingRole(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r := newRoles(t)
	appendN(t, r.store, "a", 2)
	if err := newProjector(t, r.store, &orders{name: "orders"}, nil).CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ownerPool.Exec(ctx, `CREATE TABLE shop.customers (name text)`); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, r.reportPool, "shop.orders"); n != 2 {
		t.Fatalf("as reporting: shop.orders has %d rows, want 2", n)
	}
	countRows(t, r.reportPool, "shop.order_totals")

	for setting, want := range map[string]string{
		"statement_timeout":                   "30s",
		"idle_in_transaction_session_timeout": "30s",
		"default_transaction_read_only":       "on",
		"transaction_read_only":               "on",
	} {
		var got string
		if err := r.reportPool.QueryRow(ctx, "SHOW "+setting).Scan(&got); err != nil || got != want {
			t.Errorf("as reporting: SHOW %s = %q, %v; want %q", setting, got, err, want)
		}
	}

	const readOnly = "25006" // read_only_sql_transaction
	for sql, want := range map[string]string{
		`SELECT count(*) FROM conduit.events`:                        insufficientPrivilege,
		`SELECT * FROM conduit.projection_status()`:                  insufficientPrivilege,
		`SELECT count(*) FROM shop.customers`:                        insufficientPrivilege, // not named
		`INSERT INTO shop.orders VALUES (gen_random_uuid(), 's', 1)`: readOnly,
		`UPDATE shop.order_totals SET total = 0`:                     readOnly,
		`DELETE FROM shop.orders`:                                    readOnly,
		`TRUNCATE shop.orders`:                                       readOnly,
		`CREATE TEMP TABLE scratch (a int)`:                          readOnly,
	} {
		if _, err := r.reportPool.Exec(ctx, sql); sqlState(err) != want {
			t.Errorf("as reporting: %s: %v, want SQLSTATE %s", sql, err, want)
		}
	}
	// A transaction asked to write still may not.
	err := pgx.BeginTxFunc(ctx, r.reportPool, pgx.TxOptions{AccessMode: pgx.ReadWrite}, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO shop.orders VALUES (gen_random_uuid(), 's', 1)`)
		return err
	})
	if sqlState(err) != insufficientPrivilege {
		t.Errorf("as reporting, in a read-write transaction: INSERT: %v, want permission denied", err)
	}
}

// revoke_application takes back everything in the conduit schema; the
// grant gives it back.
func TestRevokeApplication(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	r := newRoles(t)
	appendN(t, r.store, "a", 1)
	if _, err := r.ownerPool.Exec(ctx, `SELECT conduit.revoke_application($1)`, r.app); err != nil {
		t.Fatal(err)
	}
	if _, err := r.store.Append(ctx, "a", conduit.Any, mustEvent(t, "e", 1)); sqlState(err) != insufficientPrivilege {
		t.Fatalf("Append after revoke_application: %v, want permission denied", err)
	}
	var left int
	err := r.admin.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a
		                                  WHERE c.relnamespace = 'conduit'::regnamespace AND a.grantee = $1::regrole)
		                       + (SELECT count(*) FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid, aclexplode(att.attacl) a
		                                  WHERE c.relnamespace = 'conduit'::regnamespace AND a.grantee = $1::regrole)
		                       + (SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a
		                                  WHERE p.pronamespace = 'conduit'::regnamespace AND a.grantee = $1::regrole)
		                       + (SELECT count(*) FROM pg_namespace n, aclexplode(n.nspacl) a
		                                  WHERE n.nspname = 'conduit' AND a.grantee = $1::regrole)`, r.app).Scan(&left)
	if err != nil || left != 0 {
		t.Fatalf("after revoke_application the role holds %d privileges in conduit (%v)", left, err)
	}
	if _, err := r.ownerPool.Exec(ctx, `SELECT conduit.grant_application($1)`, r.app); err != nil {
		t.Fatal(err)
	}
	if _, err := r.store.Append(ctx, "a", conduit.Any, mustEvent(t, "e", 1)); err != nil {
		t.Fatalf("Append after grant_application again: %v", err)
	}
}
