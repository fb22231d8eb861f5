package cli

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/spf13/cobra"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/dbgen"
)

// migrationJSON is one migration in `migrate status`, `validate`, `up` and
// `down` output.
type migrationJSON struct {
	Version   int64      `json:"version"`
	File      string     `json:"file"`
	Applied   bool       `json:"applied"`
	AppliedAt *time.Time `json:"applied_at"`
}

// migrationsJSON is what `migrate status` and `migrate validate` print;
// `migrate up` and `migrate down` print it after their work, with Changed
// listing the versions they applied or rolled back.
type migrationsJSON struct {
	Current    int64           `json:"current_version"`
	Latest     int64           `json:"latest_version"`
	Pending    int             `json:"pending"`
	Migrations []migrationJSON `json:"migrations"`
	Changed    []int64         `json:"changed,omitempty"`
}

func (a *app) migrateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply, roll back, check or print Conduit's schema migrations",
		Long: `Conduit's schema migrations: the files embedded in the library
(conduit.Migrations()), recorded in the same goose version table the
library's Migrate uses (conduit.goose_db_version), so the command, Migrate
and your own goose pipeline always agree.`,
		Example: `  conduit migrate status
  conduit migrate validate   # in CI: exit code 3 while migrations are pending
  conduit migrate up
  conduit migrate sql > conduit.sql`,
	}
	cmd.AddCommand(a.migrateUpCommand(), a.migrateDownCommand(), a.migrateStatusCommand(),
		a.migrateValidateCommand(), a.migrateSQLCommand())
	return cmd
}

const migrationsJSONHelp = `
JSON (--json): {"current_version": 5, "latest_version": 5, "pending": 0,
"migrations": [{"version": 1, "file": "00001_events.sql", "applied": true,
"applied_at": "2026-11-30T18:00:00Z"}, ...]}`

func (a *app) migrateUpCommand() *cobra.Command {
	var to int64
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Apply pending migrations (conduit.Migrate)",
		Long: `Apply every pending migration, or those up to --to, with the library's
MigrateTo: under a session advisory lock (two deploys at once are safe),
on a direct connection (a pooler is refused). Without an explicit
--statement-timeout, migrations run without one.` + migrationsJSONHelp + `
"changed" lists the versions applied.`,
		Example: `  conduit migrate up
  conduit migrate up --to 4`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := a.connect(cmd, true)
			if err != nil {
				return err
			}
			target := int64(-1)
			if cmd.Flags().Changed("to") {
				target = to
			}
			return a.migrateTo(cmd.Context(), pool, target, "applied")
		},
	}
	cmd.Flags().Int64Var(&to, "to", 0, "migrate up to this version (default: the latest)")
	return cmd
}

func (a *app) migrateDownCommand() *cobra.Command {
	var (
		to  int64
		yes bool
	)
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Roll back the last migration, or down to --to",
		Long: `Roll back the last applied migration, or every one above --to, with
the library's MigrateTo. Down to 0 drops conduit.events and every event in
it: it needs --yes.` + migrationsJSONHelp + `
"changed" lists the versions rolled back.`,
		Example: `  conduit migrate down
  conduit migrate down --to 3`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := a.connect(cmd, true)
			if err != nil {
				return err
			}
			st, err := migrationStatus(cmd.Context(), pool)
			if err != nil {
				return err
			}
			target := st.Current - 1
			if cmd.Flags().Changed("to") {
				target = to
			}
			switch {
			case st.Current == 0 && !cmd.Flags().Changed("to"):
				return usageErrorf("migrate down: the database is at version 0, nothing to roll back")
			case target < 0 || target > st.Current:
				return usageErrorf("migrate down --to %d: the database is at version %d", target, st.Current)
			case target == 0 && st.Current > 0 && !yes:
				return usageErrorf("migrating down to 0 drops conduit.events and every event in it; pass --yes to do it")
			}
			return a.migrateTo(cmd.Context(), pool, target, "rolled back")
		},
	}
	cmd.Flags().Int64Var(&to, "to", 0, "roll back down to this version (default: one below the current)")
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm a rollback to 0, which drops every event")
	return cmd
}

// migrateTo runs the library's MigrateTo and reports what changed.
func (a *app) migrateTo(ctx context.Context, pool *pgxpool.Pool, target int64, verb string) error {
	before, err := migrationStatus(ctx, pool)
	if err != nil {
		return err
	}
	if err := conduit.MigrateTo(ctx, pool, target); err != nil {
		return err
	}
	after, err := migrationStatus(ctx, pool)
	if err != nil {
		return err
	}
	for i, m := range after.Migrations {
		if m.Applied != before.Migrations[i].Applied {
			after.Changed = append(after.Changed, m.Version)
		}
	}
	if a.json {
		return a.printJSON(after)
	}
	if len(after.Changed) == 0 {
		fmt.Fprintf(a.out, "nothing to do: the database is at version %d\n", after.Current)
		return nil
	}
	for _, v := range after.Changed {
		fmt.Fprintf(a.out, "%s %s\n", verb, after.file(v))
	}
	fmt.Fprintf(a.out, "the database is at version %d (latest %d)\n", after.Current, after.Latest)
	return nil
}

func (m migrationsJSON) file(version int64) string {
	for _, x := range m.Migrations {
		if x.Version == version {
			return x.File
		}
	}
	return strconv.FormatInt(version, 10)
}

func (a *app) migrateStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "List the migrations, applied and pending",
		Long:  `List Conduit's migrations and whether each is applied.` + migrationsJSONHelp,
		Example: `  conduit migrate status
  conduit migrate status --json | jq .pending`,
		Args: args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := a.connect(cmd, false)
			if err != nil {
				return err
			}
			st, err := migrationStatus(cmd.Context(), pool)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(st)
			}
			w := a.table()
			row(w, "VERSION", "FILE", "STATE", "APPLIED AT")
			for _, m := range st.Migrations {
				state, at := "pending", "-"
				if m.Applied {
					state = "applied"
					if m.AppliedAt != nil {
						at = m.AppliedAt.Format(time.RFC3339)
					}
				}
				row(w, m.Version, m.File, state, at)
			}
			w.Flush()
			fmt.Fprintf(a.out, "\nthe database is at version %d; latest %d; %d pending\n", st.Current, st.Latest, st.Pending)
			return nil
		},
	}
}

func (a *app) migrateValidateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Exit with code 3 while migrations are pending (a deploy gate)",
		Long: `Check that the database has every migration of this version of Conduit
applied, and none this version does not know (a newer Conduit migrated
it). Exit code 0 when it has, 3 when not: a gate for a CI or deploy step.` + migrationsJSONHelp,
		Example: `  conduit migrate validate || { echo "run conduit migrate up first"; exit 1; }`,
		Args:    args(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := a.connect(cmd, false)
			if err != nil {
				return err
			}
			st, err := migrationStatus(cmd.Context(), pool)
			if err != nil {
				return err
			}
			if a.json {
				if err := a.printJSON(st); err != nil {
					return err
				}
			}
			switch {
			case st.Current > st.Latest:
				return &exitError{code: ExitCheckFailed,
					err:  fmt.Errorf("the database is at version %d, newer than this conduit knows (%d)", st.Current, st.Latest),
					hint: "upgrade the conduit command and the library to the version that migrated the database"}
			case st.Pending > 0:
				return &exitError{code: ExitCheckFailed,
					err:  fmt.Errorf("%d migration(s) pending: the database is at version %d, latest %d", st.Pending, st.Current, st.Latest),
					hint: "run `conduit migrate up`"}
			}
			if !a.json {
				fmt.Fprintf(a.out, "ok: the database is at version %d, none pending\n", st.Current)
			}
			return nil
		},
	}
}

// migrationStatus reads the version table through goose, as Migrate does,
// without taking its lock or creating anything.
func migrationStatus(ctx context.Context, pool *pgxpool.Pool) (migrationsJSON, error) {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	provider, err := goose.NewProvider(goose.DialectPostgres, db, conduit.Migrations(),
		goose.WithTableName(conduit.MigrationTable), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return migrationsJSON{}, fmt.Errorf("migrations: %w", err)
	}
	var st migrationsJSON
	for _, s := range provider.ListSources() {
		st.Migrations = append(st.Migrations, migrationJSON{Version: s.Version, File: baseName(s.Path)})
		st.Latest = max(st.Latest, s.Version)
	}
	state, err := dbgen.New(pool).MigrationStateGet(ctx)
	if err != nil {
		return st, fmt.Errorf("read the catalog: %w", err)
	}
	if state.VersionTableExists {
		status, err := provider.Status(ctx)
		if err != nil {
			return st, fmt.Errorf("read %s: %w", conduit.MigrationTable, err)
		}
		for i, s := range status {
			if s.State == goose.StateApplied {
				st.Migrations[i].Applied = true
				st.Migrations[i].AppliedAt = timePtr(s.AppliedAt)
			}
		}
		if st.Current, err = provider.GetDBVersion(ctx); err != nil {
			return st, fmt.Errorf("read %s: %w", conduit.MigrationTable, err)
		}
	}
	for _, m := range st.Migrations {
		if !m.Applied {
			st.Pending++
		}
	}
	return st, nil
}

func baseName(path string) string {
	return path[strings.LastIndex(path, "/")+1:]
}

func (a *app) migrateSQLCommand() *cobra.Command {
	var (
		down    bool
		version int64
		record  bool
	)
	cmd := &cobra.Command{
		Use:   "sql",
		Short: "Print the migrations' SQL, for teams that apply it with another tool",
		Long: `Print the SQL of Conduit's migrations (the Up sections, in order; with
--down the Down sections, last first), each in its own transaction, as
goose runs them. It needs no database.

With --record the output also creates the goose version table the library
uses (conduit.goose_db_version) and records each version in it, in the
migration's transaction, so that conduit.Migrate, ` + "`conduit migrate status`" + `
and goose agree with what your tool applied. Without it, do not call
conduit.Migrate in your application: it would find nothing recorded and
apply everything again.`,
		Example: `  conduit migrate sql > conduit.sql && psql -v ON_ERROR_STOP=1 -f conduit.sql
  conduit migrate sql --version 5 --record
  conduit migrate sql --down --version 5`,
		Args: args(0, 0),
		RunE: func(*cobra.Command, []string) error {
			return a.printMigrationSQL(down, version, record)
		},
	}
	cmd.Flags().BoolVar(&down, "down", false, "print the Down sections, newest first")
	cmd.Flags().Int64Var(&version, "version", 0, "print only this version's migration")
	cmd.Flags().BoolVar(&record, "record", false, "also create and fill the goose version table, as Migrate would")
	return cmd
}

func (a *app) printMigrationSQL(down bool, version int64, record bool) error {
	files, err := fs.Glob(conduit.Migrations(), "*.sql")
	if err != nil {
		return err
	}
	if down {
		for i, j := 0, len(files)-1; i < j; i, j = i+1, j-1 {
			files[i], files[j] = files[j], files[i]
		}
	}
	found := false
	if record && !down {
		fmt.Fprintf(a.out, `-- The goose version table of conduit.Migrate (%[1]s).
CREATE SCHEMA IF NOT EXISTS conduit;
CREATE TABLE IF NOT EXISTS %[1]s (
    id integer PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY,
    version_id bigint NOT NULL,
    is_applied boolean NOT NULL,
    tstamp timestamp NOT NULL DEFAULT now()
);
INSERT INTO %[1]s (version_id, is_applied)
SELECT 0, true WHERE NOT EXISTS (SELECT FROM %[1]s WHERE version_id = 0);

`, conduit.MigrationTable)
	}
	for _, name := range files {
		v, err := strconv.ParseInt(name[:strings.IndexByte(name, '_')], 10, 64)
		if err != nil {
			return fmt.Errorf("migration file %s: %w", name, err)
		}
		if version != 0 && v != version {
			continue
		}
		found = true
		body, err := fs.ReadFile(conduit.Migrations(), name)
		if err != nil {
			return err
		}
		section := gooseSection(string(body), down)
		direction := "Up"
		if down {
			direction = "Down"
		}
		fmt.Fprintf(a.out, "-- %s, %s\nBEGIN;\n%s\n", name, direction, strings.TrimSpace(section))
		if record {
			if down {
				fmt.Fprintf(a.out, "DELETE FROM %s WHERE version_id = %d;\n", conduit.MigrationTable, v)
			} else {
				fmt.Fprintf(a.out, "INSERT INTO %s (version_id, is_applied) VALUES (%d, true);\n", conduit.MigrationTable, v)
			}
		}
		fmt.Fprint(a.out, "COMMIT;\n\n")
	}
	if !found {
		return &exitError{code: ExitNotFound, err: fmt.Errorf("no migration with version %d", version),
			hint: "`conduit migrate status` lists the versions"}
	}
	return nil
}

// gooseSection returns the Up or Down section of a goose SQL file, its
// annotation lines left out.
func gooseSection(body string, down bool) string {
	var b strings.Builder
	in := false
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		switch strings.TrimSpace(line) {
		case "-- +goose Up":
			in = !down
			continue
		case "-- +goose Down":
			in = down
			continue
		case "-- +goose StatementBegin", "-- +goose StatementEnd":
			continue
		}
		if in {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	return b.String()
}
