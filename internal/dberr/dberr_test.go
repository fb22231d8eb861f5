package dberr_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/dberr"
	"github.com/conduit-es/conduit/internal/dbgen"
	"github.com/conduit-es/conduit/internal/pgtest"
)

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want dberr.Kind
	}{
		{nil, dberr.Other},
		{errors.New("handler bug"), dberr.Other},
		{io.ErrUnexpectedEOF, dberr.Transient},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), dberr.Transient},
		{&pgconn.PgError{Code: "08006"}, dberr.Transient},
		{&pgconn.PgError{Code: "57P01"}, dberr.Transient},     // admin shutdown
		{&pgconn.PgError{Code: "40001"}, dberr.Transient},     // serialization failure
		{&pgconn.PgError{Code: "40P01"}, dberr.Transient},     // deadlock
		{&pgconn.PgError{Code: "53300"}, dberr.Transient},     // too many connections
		{&pgconn.PgError{Code: "57014"}, dberr.QueryCanceled}, // statement_timeout: not transient
		{&pgconn.PgError{Code: "23505", ConstraintName: dberr.ConstraintStreamVersion}, dberr.StreamVersionTaken},
		{&pgconn.PgError{Code: "23505", ConstraintName: dberr.ConstraintEventID}, dberr.EventIDTaken},
		{&pgconn.PgError{Code: "23505", ConstraintName: "users_email_key"}, dberr.UniqueViolation},
		{&pgconn.PgError{Code: "22P02"}, dberr.Other},
		{&pgconn.PgError{Code: "26000"}, dberr.PreparedStatementMismatch}, // prepared statement does not exist
		{&pgconn.PgError{Code: "42P05"}, dberr.PreparedStatementMismatch}, // prepared statement already exists
		{fmt.Errorf("conduit: x: %w", &pgconn.PgError{Code: dberr.CodeRestoredDatabase}), dberr.RestoredDatabase},
		{&pgconn.PgError{Code: dberr.CodeOnlineRebuildRefused}, dberr.OnlineRebuildRefused},
		{&pgconn.PgError{Code: dberr.CodeLeaseLost}, dberr.LeaseLost},
	} {
		if got := dberr.Classify(c.err); got != c.want {
			t.Errorf("Classify(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

// The names and codes the Go code shares with the migrations exist in the
// migrated schema, and each code is what the database really raises: a
// migration that renames one fails here.
func TestRolledBack(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{io.ErrUnexpectedEOF, false},            // the connection: maybe committed
		{context.Canceled, false},               // the client stopped waiting
		{&pgconn.PgError{Code: "57P01"}, false}, // terminated: maybe after the commit
		{&pgconn.PgError{Code: "57014"}, false}, // cancelled: maybe after the commit
		{&pgconn.PgError{Code: "08006"}, false}, // connection failure
		{&pgconn.PgError{Code: "XX000"}, false}, // internal error
		{&pgconn.PgError{Code: "23505"}, true},  // unique violation
		{&pgconn.PgError{Code: "40P01"}, true},  // deadlock
		{&pgconn.PgError{Code: "40001"}, true},  // serialization failure
		{fmt.Errorf("x: %w", &pgconn.PgError{Code: "22P02"}), true},
	} {
		if got := dberr.RolledBack(c.err); got != c.want {
			t.Errorf("RolledBack(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestNamesMatchCatalog(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewPool(t, conduit.Migrations(), conduit.Migrate)

	for name, cols := range map[string]string{
		dberr.ConstraintStreamVersion: "stream_id,stream_version",
		dberr.ConstraintEventID:       "event_id",
	} {
		var got string
		err := pool.QueryRow(ctx, `
			SELECT string_agg(a.attname, ',' ORDER BY k.ord)
			  FROM pg_constraint c
			  CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
			  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
			 WHERE c.conname = $1 AND c.contype = 'u' AND c.conrelid = 'conduit.events'::regclass`, name).Scan(&got)
		if err != nil || got != cols {
			t.Errorf("unique constraint %s on conduit.events: columns %q, %v; want %q", name, got, err, cols)
		}
	}

	// The wake-up query notifies the channel the listener listens on.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if err := dbgen.New(conn).ListenEvents(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dbgen.New(pool).NotifyEvents(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := conn.Conn().WaitForNotification(ctx); err != nil || n.Channel != dberr.EventsChannel {
		t.Errorf("notification %+v, %v; want one on %q", n, err, dberr.EventsChannel)
	}
	// conduit.resume_projection wakes projectors on the same channel.
	if _, err := pool.Exec(ctx, `INSERT INTO conduit.projections (name) VALUES ('resumed')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `SELECT conduit.resume_projection('resumed')`); err != nil {
		t.Fatal(err)
	}
	if n, err := conn.Conn().WaitForNotification(ctx); err != nil || n.Channel != dberr.EventsChannel {
		t.Errorf("resume_projection's notification %+v, %v; want one on %q", n, err, dberr.EventsChannel)
	}
	if _, err := conn.Exec(ctx, "UNLISTEN *"); err != nil {
		t.Fatal(err)
	}

	raises := func(sql string, want dberr.Kind) {
		t.Helper()
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, sql)
			return err
		})
		if got := dberr.Classify(err); got != want {
			t.Errorf("%s: %v classified %d, want %d", sql, err, got, want)
		}
	}
	if _, err := pool.Exec(ctx, `SELECT * FROM conduit.append_to_stream('s', -1, ARRAY[gen_random_uuid()], '{t}', '{1}', '{""}')`); err != nil {
		t.Fatal(err)
	}
	raises(`UPDATE conduit.events SET event_type = 'x'`, dberr.AppendOnly)
	raises(`SELECT conduit.rebuild_projection('no such projection')`, dberr.NoProjection)
	raises(`SELECT conduit.pause_projection('no such projection')`, dberr.NoProjection)
	raises(`SELECT conduit.resume_projection('no such projection')`, dberr.NoProjection)
	raises(`SELECT conduit.abort_transaction('test')`, dberr.TransactionAborted)
	raises(`SELECT conduit.lease_lost('projection', 'test')`, dberr.LeaseLost)
	// The projector's checkpoint save, fenced by a lease nobody holds.
	if _, err := pool.Exec(ctx, `INSERT INTO conduit.projections (name) VALUES ('fenced')`); err != nil {
		t.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		_, err := dbgen.New(tx).ProjectionCheckpointSave(ctx, dbgen.ProjectionCheckpointSaveParams{
			Name: "fenced", Owner: "nobody", Epoch: 7, CheckpointTx: 1})
		return err
	})
	if got := dberr.Classify(err); got != dberr.LeaseLost {
		t.Errorf("checkpoint save under a lease not held: %v classified %d, want LeaseLost", err, got)
	}
	raises(`INSERT INTO conduit.events (stream_id, stream_version, event_id, event_type, data)
	        SELECT 's', 1, gen_random_uuid(), 't', '1'`, dberr.StreamVersionTaken)
	raises(`INSERT INTO conduit.events (stream_id, stream_version, event_id, event_type, data)
	        SELECT 's2', 1, event_id, 't', '1' FROM conduit.events`, dberr.EventIDTaken)
	raises(`SELECT conduit.assert_transaction_ids()`, dberr.Other) // not restored: true
	restore(t, ctx, pool)
	raises(`SELECT conduit.assert_transaction_ids()`, dberr.RestoredDatabase)
}

// Every status of conduit.explain_append is one of the constants, and each
// constant comes up.
func TestExplainAppendStatuses(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := pgtest.NewPool(t, conduit.Migrations(), conduit.Migrate)
	const stored = "00000000-0000-0000-0000-000000000001"
	if _, err := pool.Exec(ctx, `SELECT * FROM conduit.append_to_stream('s', -2, ARRAY[$1::uuid], '{t}', '{1}', '{""}')`, stored); err != nil {
		t.Fatal(err)
	}
	explain := func(stream string, expected int64, id string) string {
		t.Helper()
		var status string
		err := pool.QueryRow(ctx, `SELECT r_status FROM conduit.explain_append($1, $2, ARRAY[$3::uuid])`, stream, expected, id).Scan(&status)
		if err != nil {
			t.Fatal(err)
		}
		return status
	}
	fresh := "00000000-0000-0000-0000-0000000000ff"
	for _, c := range []struct {
		stream   string
		expected int64
		id       string
		want     string
	}{
		{"s", -2, stored, dberr.StatusDuplicate},
		{"other", -1, stored, dberr.StatusEventIDConflict},
		{"s", -2, fresh, dberr.StatusVersionConflict},
		{"s", -1, fresh, dberr.StatusOK},
		{"s", -7, fresh, dberr.StatusInvalidExpected},
	} {
		if got := explain(c.stream, c.expected, c.id); got != c.want {
			t.Errorf("explain_append(%q, %d, %s) = %q, want %q", c.stream, c.expected, c.id, got, c.want)
		}
	}
	// A transaction that wrote before a younger one appended.
	older, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer older.Rollback(ctx) //nolint:errcheck
	if _, err := older.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `SELECT * FROM conduit.append_to_stream('s', -1, ARRAY[gen_random_uuid()], '{t}', '{2}', '{""}')`); err != nil {
		t.Fatal(err)
	}
	var status string
	if err := older.QueryRow(ctx, `SELECT r_status FROM conduit.explain_append('s', -1, ARRAY[gen_random_uuid()])`).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if status != dberr.StatusTransactionOrder {
		t.Errorf("older transaction: %q, want %q", status, dberr.StatusTransactionOrder)
	}
	_ = older.Rollback(ctx)
	restore(t, ctx, pool)
	if got := explain("s", -1, fresh); got != dberr.StatusRestoredDatabase {
		t.Errorf("restored database: %q, want %q", got, dberr.StatusRestoredDatabase)
	}
}

// restore makes the database look restored from a logical dump into another
// cluster: stored transaction ids far above the server's.
func restore(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
	t.Helper()
	for _, sql := range []string{
		`ALTER TABLE conduit.events DISABLE TRIGGER events_immutable`,
		`UPDATE conduit.events SET transaction_id = (transaction_id::text::bigint + 1000000000)::text::xid8`,
		`ALTER TABLE conduit.events ENABLE TRIGGER events_immutable`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
}
