// Package cli is the conduit command (cmd/conduit), in a package of its own
// so that tests run it in-process: Run takes the arguments and the standard
// streams and returns the exit code.
//
// Arguments and completion are cobra's, the rebuild's progress bar is
// progressbar's, tables are text/tabwriter's. The library's importers never
// compile this package.
//
// # Exit codes
//
// Stable, for scripts and CI:
//
//	0  ok
//	1  error (connection, database, anything unexpected)
//	2  usage (unknown command or flag, bad argument)
//	3  a check failed: `migrate validate` with migrations pending, `doctor`
//	   with a problem
//	4  version conflict: `append --expect` did not hold
//	5  not found: no such stream, projection, parked event or dead letter
//
// Errors go to stderr, with a hint line where one helps.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/conduit-es/conduit"
)

// Exit codes of the conduit command (see the package doc).
const (
	ExitOK          = 0
	ExitError       = 1
	ExitUsage       = 2
	ExitCheckFailed = 3
	ExitConflict    = 4
	ExitNotFound    = 5
)

// ApplicationName is the application_name the command's sessions carry in
// pg_stat_activity.
const ApplicationName = "conduit-cli"

// StatementTimeoutDefault bounds the command's own queries; `migrate up`
// and `migrate down` run without it unless --statement-timeout is given.
const StatementTimeoutDefault = 30 * time.Second

// exitError is an error with its exit code and, where one helps, a hint.
type exitError struct {
	code int
	err  error
	hint string
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &exitError{code: ExitUsage, err: fmt.Errorf(format, args...)}
}

// withHint attaches a hint to err, keeping its exit code.
func withHint(err error, hint string) error {
	var ee *exitError
	if errors.As(err, &ee) {
		return &exitError{code: ee.code, err: ee.err, hint: hint}
	}
	return &exitError{code: codeOf(err), err: err, hint: hint}
}

// codeOf maps the library's errors to exit codes.
func codeOf(err error) int {
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, conduit.ErrVersionConflict):
		return ExitConflict
	case errors.Is(err, conduit.ErrNotFound):
		return ExitNotFound
	}
	return ExitError
}

// hintFor suggests the way out of an error, or "".
func hintFor(err error) string {
	var ee *exitError
	if errors.As(err, &ee) && ee.hint != "" {
		return ee.hint
	}
	var pgErr *pgconn.PgError
	var connErr *pgconn.ConnectError
	switch {
	case errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "42883" || pgErr.Code == "3F000"):
		// undefined table, function or schema: Conduit's schema is missing or old.
		return "run `conduit migrate up` (`conduit migrate status` lists what is pending)"
	case errors.As(err, &pgErr) && pgErr.Code == "57014":
		return "the statement ran longer than --statement-timeout; raise it (0 turns it off)"
	case errors.As(err, &connErr):
		return "check --database-url, DATABASE_URL or the PG* variables (PGHOST, PGPORT, PGUSER, PGDATABASE)"
	case errors.Is(err, conduit.ErrRestoredDatabase):
		return "run SELECT conduit.rebase_transaction_ids(); as the schema's owner (see `conduit doctor`)"
	}
	return ""
}

// app holds the global flags and the connection of one Run.
type app struct {
	in          io.Reader
	out, errOut io.Writer

	databaseURL      string
	json             bool
	statementTimeout time.Duration

	// reached is set once a command's own code runs: an error before it is a
	// usage error (unknown command or flag, wrong number of arguments).
	reached bool
	pool    *pgxpool.Pool
	store   *conduit.Store
}

// Run runs the conduit command with args (without the program name) and
// returns its exit code. ctx ending (Ctrl-C in cmd/conduit) ends a
// following command such as tail cleanly, with exit code 0.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{in: stdin, out: stdout, errOut: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if a.store != nil {
		a.store.Close()
	}
	if a.pool != nil {
		a.pool.Close()
	}
	if err == nil {
		return ExitOK
	}
	code := codeOf(err)
	if !a.reached {
		code = ExitUsage
	}
	fmt.Fprintf(stderr, "conduit: %s\n", strings.TrimPrefix(err.Error(), "conduit: "))
	if hint := hintFor(err); hint != "" {
		fmt.Fprintf(stderr, "hint: %s\n", hint)
	} else if code == ExitUsage {
		fmt.Fprintln(stderr, "hint: see `conduit --help`, or `conduit COMMAND --help`")
	}
	return code
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "conduit",
		Short: "Operate a Conduit event store: migrations, events, projections, health",
		Long: `conduit operates a Conduit event store in PostgreSQL.

Connection: --database-url, else DATABASE_URL, else the libpq variables
(PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, ...) and their defaults.
Sessions carry application_name=conduit-cli and a statement_timeout
(--statement-timeout, 30s by default; 0 turns it off).

Output: aligned tables for people; --json prints one documented JSON
value per command (see each command's --help) for scripts.

Exit codes: 0 ok, 1 error, 2 usage, 3 a check failed (migrations
pending, doctor found problems), 4 version conflict, 5 not found.`,
		Example: `  export DATABASE_URL=postgres://app@db.internal:5432/shop
  conduit migrate validate && conduit doctor
  conduit projections list --json | jq '.[] | select(.state == "stalled")'`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			a.reached = true
			return nil
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: ExitUsage, err: err}
	})
	flags := root.PersistentFlags()
	flags.StringVar(&a.databaseURL, "database-url", "",
		"PostgreSQL URL or keyword/value string (default: DATABASE_URL, else the PG* variables)")
	flags.BoolVar(&a.json, "json", false, "print JSON for scripts (the schema is in each command's help)")
	flags.DurationVar(&a.statementTimeout, "statement-timeout", StatementTimeoutDefault,
		"statement_timeout of the command's queries (0: none)")

	root.AddCommand(a.migrateCommand(), a.appendCommand(), a.readCommand(), a.streamCommand(), a.tailCommand(),
		a.projectionsCommand(), a.outboxCommand(), a.doctorCommand())
	return root
}

// connect opens the pool once. noDefaultTimeout drops the default
// statement_timeout (migrations may run long); an explicit
// --statement-timeout still applies.
func (a *app) connect(cmd *cobra.Command, noDefaultTimeout bool) (*pgxpool.Pool, error) {
	if a.pool != nil {
		return a.pool, nil
	}
	timeout := a.statementTimeout
	if noDefaultTimeout && !cmd.Flags().Changed("statement-timeout") {
		timeout = 0
	}
	cfg, err := poolConfig(a.databaseURL, timeout)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(cmd.Context(), cfg)
	if err != nil {
		return nil, err
	}
	a.pool = pool
	return pool, nil
}

// poolConfig is the connection: url, else DATABASE_URL, else the PG*
// variables and libpq's defaults; application_name conduit-cli and
// statement_timeout timeout (0: none).
func poolConfig(url string, timeout time.Duration) (*pgxpool.Config, error) {
	if url == "" {
		url = os.Getenv("DATABASE_URL")
	}
	cfg, err := pgxpool.ParseConfig(url) // "" means the PG* variables and libpq's defaults
	if err != nil {
		return nil, withHint(fmt.Errorf("connection string: %w", err),
			"--database-url and DATABASE_URL take a postgres:// URL or a keyword/value string")
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = ApplicationName
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(timeout.Milliseconds(), 10)
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	}
	cfg.MaxConns = 4
	return cfg, nil
}

// storeFor returns a Store on the command's pool.
func (a *app) storeFor(cmd *cobra.Command) (*conduit.Store, error) {
	if a.store != nil {
		return a.store, nil
	}
	pool, err := a.connect(cmd, false)
	if err != nil {
		return nil, err
	}
	store, err := conduit.NewStore(pool, nil)
	if err != nil {
		return nil, err
	}
	a.store = store
	return store, nil
}

// args checks the number of positional arguments, as a usage error.
func args(lo, hi int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if len(a) < lo || len(a) > hi {
			want := strconv.Itoa(lo)
			if hi != lo {
				want = fmt.Sprintf("%d to %d", lo, hi)
			}
			return usageErrorf("%s takes %s argument(s), got %d (usage: %s)", cmd.CommandPath(), want, len(a), cmd.UseLine())
		}
		return nil
	}
}
