package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func TestPoolConfig(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://someone@db.example:5433/fromenv")
	cfg, err := poolConfig("", StatementTimeoutDefault)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.ConnConfig
	if c.Database != "fromenv" || c.Port != 5433 || c.RuntimeParams["application_name"] != ApplicationName ||
		c.RuntimeParams["statement_timeout"] != "30000" || c.ConnectTimeout != 10*time.Second {
		t.Fatalf("from DATABASE_URL: database %q port %d params %v timeout %s", c.Database, c.Port, c.RuntimeParams, c.ConnectTimeout)
	}
	// The flag wins over DATABASE_URL; its own application_name does not.
	cfg, err = poolConfig("postgres://other@db.example/fromflag?application_name=mine&connect_timeout=3", 0)
	if err != nil {
		t.Fatal(err)
	}
	c = cfg.ConnConfig
	if c.Database != "fromflag" || c.RuntimeParams["application_name"] != ApplicationName ||
		c.RuntimeParams["statement_timeout"] != "0" || c.ConnectTimeout != 3*time.Second {
		t.Fatalf("from the flag: database %q params %v timeout %s", c.Database, c.RuntimeParams, c.ConnectTimeout)
	}
	// Without either, the PG* variables.
	t.Setenv("DATABASE_URL", "")
	t.Setenv("PGDATABASE", "frompg")
	t.Setenv("PGHOST", "pg.example")
	if cfg, err = poolConfig("", time.Second); err != nil {
		t.Fatal(err)
	}
	if c = cfg.ConnConfig; c.Database != "frompg" || c.Host != "pg.example" || c.RuntimeParams["statement_timeout"] != "1000" {
		t.Fatalf("from PG*: database %q host %q params %v", c.Database, c.Host, c.RuntimeParams)
	}
	r := run(t, "postgres://x@h:5432/d?sslmode=bogus", "", "read", "x")
	if r.code != ExitError || !strings.Contains(r.stderr, "hint: --database-url and DATABASE_URL take") {
		t.Fatalf("a bad connection string:\n%s", r)
	}
}

func TestConnectionFailureHint(t *testing.T) {
	t.Parallel()
	r := run(t, "postgres://nobody@127.0.0.1:1/none?connect_timeout=2", "", "projections", "list")
	if r.code != ExitError || !strings.Contains(r.stderr, "hint: check --database-url, DATABASE_URL or the PG* variables") {
		t.Fatalf("no server:\n%s", r)
	}
}

// Every command has --help with an example, and takes --json.
func TestEveryCommandHasHelpAndExample(t *testing.T) {
	t.Parallel()
	a := &app{}
	var walk func(cmd *cobra.Command)
	walk = func(cmd *cobra.Command) {
		if cmd.Hidden || cmd.Name() == "help" || strings.HasPrefix(cmd.CommandPath(), "conduit completion") {
			return
		}
		if cmd.Example == "" || cmd.Short == "" {
			t.Errorf("%s: no example or short description", cmd.CommandPath())
		}
		if cmd.Runnable() && !strings.Contains(cmd.Long, "JSON (--json)") && cmd.Name() != "sql" {
			t.Errorf("%s: its help does not document its --json output", cmd.CommandPath())
		}
		args := strings.Fields(cmd.CommandPath())[1:]
		args = append(args, "--help")
		r := mustRun(t, ExitOK, "", "", args...)
		if !strings.Contains(r.stdout, "Examples:") {
			t.Errorf("conduit %s: no example in:\n%s", strings.Join(args, " "), r.stdout)
		}
		for _, c := range cmd.Commands() {
			walk(c)
		}
	}
	walk(a.rootCommand())
	if r := mustRun(t, ExitOK, "", "", "completion", "zsh"); !strings.Contains(r.stdout, "compdef") {
		t.Fatalf("completion zsh:\n%s", r.stdout[:min(len(r.stdout), 300)])
	}
}
