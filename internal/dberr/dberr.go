// Package dberr is the one place where Conduit interprets errors from
// PostgreSQL and the driver: SQLSTATEs, constraint names, Conduit's own CDI
// codes, and which failures are transient. The names and codes that the Go
// code shares with the SQL in db/ are constants here; a test checks them
// against pg_catalog, so a migration cannot rename one silently.
//
// The root package turns a Kind into its public typed errors; nothing else
// looks inside a *pgconn.PgError.
package dberr

import (
	"context"
	"errors"
	"io"
	"net"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Names shared with db/migrations.
const (
	// ConstraintStreamVersion is UNIQUE (stream_id, stream_version) on
	// conduit.events.
	ConstraintStreamVersion = "events_stream_version_key"
	// ConstraintEventID is UNIQUE (event_id) on conduit.events.
	ConstraintEventID = "events_event_id_key"

	// CodeAppendOnly: an UPDATE, DELETE or TRUNCATE of conduit.events
	// (conduit.refuse_event_change).
	CodeAppendOnly = "CDI01"
	// CodeNoProjection: conduit.rebuild_projection (or pause_projection,
	// resume_projection) was given an unknown name.
	CodeNoProjection = "CDI02"
	// CodeTransactionAborted: conduit.abort_transaction, called when a
	// synchronous projection fails inside AppendTx.
	CodeTransactionAborted = "CDI03"
	// CodeRestoredDatabase: conduit.assert_transaction_ids found stored
	// transaction ids above the server's (a logical restore).
	CodeRestoredDatabase = "CDI04"
	// CodeOnlineRebuildRefused: conduit.check_online_rebuild found a read
	// table that an online rebuild cannot replace soundly.
	CodeOnlineRebuildRefused = "CDI05"
	// CodeLeaseLost: conduit.lease_lost, called by a statement fenced by
	// a lease's (owner, epoch) that found the lease held by another.
	CodeLeaseLost = "CDI06"

	// EventsChannel is the NOTIFY channel that wakes projectors.
	EventsChannel = "conduit_events"
)

// Statuses of conduit.explain_append (and conduit.append_verdict).
const (
	StatusOK               = "ok"
	StatusDuplicate        = "duplicate"
	StatusVersionConflict  = "version_conflict"
	StatusEventIDConflict  = "event_id_conflict"
	StatusTransactionOrder = "transaction_order"
	StatusRestoredDatabase = "restored_database"
	StatusInvalidExpected  = "invalid_expected_version"
)

// Kind is what an error means to Conduit.
type Kind int

const (
	// Other: none of the below; reported as is.
	Other Kind = iota
	// Transient: the connection, the server or the transaction failed for
	// a reason that says nothing about the work (connection lost, server
	// shutting down or restarting, out of resources, serialization failure,
	// deadlock, lock not available, a context that ended). The outcome of a
	// write in flight is unknown; doing the same work again is safe where it
	// is idempotent, and may succeed.
	Transient
	// QueryCanceled: a statement cancelled by statement_timeout or by an
	// operator (57014). The work was too slow; not transient.
	QueryCanceled
	// StreamVersionTaken: a unique violation of ConstraintStreamVersion.
	StreamVersionTaken
	// EventIDTaken: a unique violation of ConstraintEventID.
	EventIDTaken
	// UniqueViolation: any other unique violation (such as two concurrent
	// CREATE SCHEMA IF NOT EXISTS).
	UniqueViolation
	// AppendOnly: CodeAppendOnly.
	AppendOnly
	// NoProjection: CodeNoProjection.
	NoProjection
	// TransactionAborted: CodeTransactionAborted.
	TransactionAborted
	// RestoredDatabase: CodeRestoredDatabase.
	RestoredDatabase
	// OnlineRebuildRefused: CodeOnlineRebuildRefused.
	OnlineRebuildRefused
	// LeaseLost: CodeLeaseLost.
	LeaseLost
	// PreparedStatementMismatch: the server connection lacked a statement
	// its client connection had prepared by name (26000), or already had
	// one of the name it was preparing (42P05). Conduit prepares nothing by
	// name itself: this is pgx's statement cache (QueryExecModeCacheStatement,
	// its default) behind a pooler in transaction mode, which runs each
	// transaction on whichever server connection is free. The statement did
	// not run. (An unnamed statement lost between two round trips,
	// QueryExecModeDescribeExec behind such a pooler, is 26000 too.)
	PreparedStatementMismatch
)

// Classify says what err means. A nil err is Other.
func Classify(err error) Kind {
	if err == nil {
		return Other
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return classifyPg(pgErr)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, pgx.ErrTxClosed) || pgconn.Timeout(err) || pgconn.SafeToRetry(err) {
		return Transient
	}
	var netErr net.Error
	var connectErr *pgconn.ConnectError
	if errors.As(err, &netErr) || errors.As(err, &connectErr) {
		return Transient
	}
	return Other
}

func classifyPg(e *pgconn.PgError) Kind {
	switch e.Code {
	case "23505":
		switch e.ConstraintName {
		case ConstraintStreamVersion:
			return StreamVersionTaken
		case ConstraintEventID:
			return EventIDTaken
		}
		return UniqueViolation
	case "57014":
		return QueryCanceled
	case "40001", "40P01", "55P03": // serialization failure, deadlock, lock not available
		return Transient
	case "26000", "42P05": // invalid_sql_statement_name, duplicate_prepared_statement
		return PreparedStatementMismatch
	case CodeAppendOnly:
		return AppendOnly
	case CodeNoProjection:
		return NoProjection
	case CodeTransactionAborted:
		return TransactionAborted
	case CodeRestoredDatabase:
		return RestoredDatabase
	case CodeOnlineRebuildRefused:
		return OnlineRebuildRefused
	case CodeLeaseLost:
		return LeaseLost
	}
	switch e.Code[:2] {
	case "08", "53", "57", "58": // connection, resources, operator intervention, system
		return Transient
	}
	return Other
}

// IsTransient reports Classify(err) == Transient.
func IsTransient(err error) bool { return Classify(err) == Transient }

// RolledBack reports an error the server answered a statement with while
// it stayed up, for a statement that ran in a transaction of its own
// (implicit): that transaction rolled back, and nothing of the statement
// committed, so what it wrote can be written again. A lost connection, a
// cancelled statement or an operator's intervention (classes 08, 57, 58,
// XX) may have come after the commit: their outcome is unknown.
func RolledBack(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) < 2 {
		return false
	}
	switch pgErr.Code[:2] {
	case "08", "57", "58", "XX":
		return false
	}
	return true
}

// IsLockTimeout reports a statement that gave up waiting for a lock
// (lock_timeout: SQLSTATE 55P03, lock_not_available).
func IsLockTimeout(err error) bool {
	var e *pgconn.PgError
	return errors.As(err, &e) && e.Code == "55P03"
}
