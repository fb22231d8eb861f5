// Command conduit operates a Conduit event store from the terminal, from
// scripts and from CI: migrations, events, projections and a health check
// (conduit doctor). Install it with
//
//	go install github.com/conduit-es/conduit/cmd/conduit@latest
//
// It connects with --database-url, else DATABASE_URL, else the libpq PG*
// variables and defaults, as application_name conduit-cli and with a
// statement_timeout of its own (--statement-timeout). Every command has
// --help with an example, and --json for scripts; `conduit completion`
// writes shell completion. Exit codes: 0 ok, 1 error, 2 usage, 3 a check
// failed (migrations pending, doctor found problems), 4 version conflict,
// 5 not found.
//
// The command lives in the library's module, so that go install needs
// nothing but the module path, but importers of the library do not compile
// it or its dependencies (cobra, progressbar): Go builds only the packages
// a program imports. The logic is in internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/conduit-es/conduit/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
