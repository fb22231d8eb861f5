package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/conduit-es/conduit/conduittest"
	"github.com/conduit-es/conduit/internal/cli"
)

// build compiles the command into a temporary directory.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "conduit")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// command runs the binary with only DATABASE_URL set, as a user would.
func command(ctx context.Context, bin, url string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{"DATABASE_URL=" + url, "PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	return cmd
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("run: %v", err)
	return -1
}

// The binary's exit codes, its connection from DATABASE_URL, and tail's
// clean exit on Ctrl-C (SIGINT).
func TestBinary(t *testing.T) {
	bin := build(t)
	url := conduittest.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"migrate", "validate"}, cli.ExitOK},
		{[]string{"append", "order-1", "placed", `{"n":1}`, "--expect", "no-stream"}, cli.ExitOK},
		{[]string{"append", "order-1", "placed", `{"n":1}`, "--expect", "no-stream"}, cli.ExitConflict},
		{[]string{"stream", "nobody"}, cli.ExitNotFound},
		{[]string{"no-such-command"}, cli.ExitUsage},
		{[]string{"read", "--no-such-flag", "x"}, cli.ExitUsage},
		{[]string{"--database-url", "postgres://nobody@127.0.0.1:1/none?connect_timeout=2", "read", "x"}, cli.ExitError},
		{[]string{"completion", "bash"}, cli.ExitOK},
	} {
		out, err := command(ctx, bin, url, c.args...).CombinedOutput()
		if got := exitCode(t, err); got != c.code {
			t.Errorf("conduit %s: exit code %d, want %d\n%s", strings.Join(c.args, " "), got, c.code, out)
		}
	}

	// tail prints what is committed, and SIGINT ends it cleanly.
	tail := command(ctx, bin, url, "tail", "--from", "start")
	stdout, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	tail.Stderr = &stderr
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewReader(stdout)
	line, err := lines.ReadString('\n')
	if err != nil || !strings.Contains(line, "order-1@1  placed") {
		t.Fatalf("tail's first line %q: %v", line, err)
	}
	if err := tail.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(lines)
	if err := tail.Wait(); err != nil {
		t.Fatalf("tail after SIGINT: %v (want exit code 0)\nstdout: %s\nstderr: %s", err, rest, stderr.String())
	}
	if stderr.Len() != 0 {
		t.Fatalf("tail wrote to stderr: %s", stderr.String())
	}
}

// Without DATABASE_URL the PG* variables name the server.
func TestBinaryLibpqVariables(t *testing.T) {
	bin := build(t)
	url := conduittest.NewDatabase(t)
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "migrate", "validate")
	cmd.Env = []string{"PGHOST=" + cfg.Host, "PGPORT=" + strconv.Itoa(int(cfg.Port)), "PGUSER=" + cfg.User,
		"PGPASSWORD=" + cfg.Password, "PGDATABASE=" + cfg.Database, "PGSSLMODE=disable", "HOME=" + os.Getenv("HOME")}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("migrate validate with PG* variables: %v\n%s", err, out)
	}
}

// Programs that import the library do not compile the command's
// dependencies.
func TestLibraryDoesNotImportCommandDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/conduit-es/conduit", "github.com/conduit-es/conduit/conduittest").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, heavy := range []string{"github.com/spf13/", "github.com/schollz/progressbar", "golang.org/x/term", "conduit/internal/cli"} {
			if strings.Contains(pkg, heavy) {
				t.Errorf("the library depends on %s", pkg)
			}
		}
	}
}
