// Command conduit-soak runs Conduit under a mixed load while injecting
// faults, then checks that nothing was lost, repeated or reordered.
//
// It creates its own database on the server named by DATABASE_URL, starts
// several projections, each run by several projector processes (this
// binary re-executed as a child), appends from many writers that resend on
// an unknown outcome, and injects at random: pg_terminate_backend on every
// kind of connection (writers, projector batches, listeners), projector
// processes killed (SIGKILL) and paused (SIGSTOP) for longer than their
// lease, slow handlers, a transaction holding the safe horizon, and (with
// -restart) a PostgreSQL restart. At the end it lets the projections catch
// up and checks:
//
//   - every acknowledged append is stored;
//   - every stored event is applied exactly once by every projection;
//   - each stream is applied in version order;
//   - the read tables equal what the log says, and equal a rebuild;
//   - the lag is back to zero within -converge;
//   - no connection is left busy or idle in a transaction.
//
// It prints the figures as Markdown (-out writes them to a file as well)
// and exits non-zero if a check fails.
//
// Usage:
//
//	go run ./internal/cmd/conduit-soak -duration 2m -restart
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const defaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// childCommand is the first argument of a projector child process.
const childCommand = "child"

type options struct {
	url         string
	duration    time.Duration
	writers     int
	streams     int
	rate        int // appends per second, all writers together
	projections int
	instances   int // projector processes per projection
	lease       time.Duration
	faultEvery  time.Duration
	slowEvery   int           // one event in slowEvery is slow to project (0: none)
	slowMax     time.Duration // the longest a slow event takes
	restart     bool
	converge    time.Duration
	rebuild     time.Duration
	seed        uint64
	out         string
	doc         string
	keep        bool
}

func main() {
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("conduit-soak: ")
	if len(os.Args) > 1 && os.Args[1] == childCommand {
		if err := runChild(os.Args[2:]); err != nil {
			log.Fatalf("child: %v", err)
		}
		return
	}
	var o options
	flag.StringVar(&o.url, "db", cmp.Or(os.Getenv("DATABASE_URL"), defaultURL), "server URL (defaults to DATABASE_URL); the soak creates and drops its own database there")
	flag.DurationVar(&o.duration, "duration", 2*time.Minute, "how long to append and inject faults")
	flag.IntVar(&o.writers, "writers", 8, "concurrent writers")
	flag.IntVar(&o.streams, "streams", 40, "streams the writers share")
	flag.IntVar(&o.rate, "rate", 400, "appends per second, all writers together")
	flag.IntVar(&o.projections, "projections", 2, "projections")
	flag.IntVar(&o.instances, "instances", 2, "projector processes per projection")
	flag.DurationVar(&o.lease, "lease", 3*time.Second, "projectors' LeaseDuration")
	flag.DurationVar(&o.faultEvery, "fault-every", 2*time.Second, "mean time between injected faults")
	flag.IntVar(&o.slowEvery, "slow-every", 2000, "one event in this many is slow to project (0: none)")
	flag.DurationVar(&o.slowMax, "slow-max", time.Second, "the longest a slow event takes to project")
	flag.BoolVar(&o.restart, "restart", false, "also restart PostgreSQL (pg_ctlcluster; needs the right to)")
	flag.DurationVar(&o.converge, "converge", 90*time.Second, "bound on the time to catch up after the load stops")
	flag.DurationVar(&o.rebuild, "rebuild-within", 10*time.Minute, "bound on the time to rebuild one projection at the end (its replay meets the slow events again)")
	flag.Uint64Var(&o.seed, "seed", 0, "random seed (0: from the clock); printed, to replay a run's choices")
	flag.StringVar(&o.out, "out", "", "also write the report to this file")
	flag.StringVar(&o.doc, "doc", "", "also put the report into this Markdown file, between <!-- soak begin --> and <!-- soak end -->")
	flag.BoolVar(&o.keep, "keep", false, "keep the soak database for inspection")
	flag.Parse()
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	r, err := run(ctx, o)
	stop()
	if r != nil {
		report := r.markdown(o)
		fmt.Print(report)
		if o.out != "" {
			if werr := os.WriteFile(o.out, []byte(report), 0o644); werr != nil {
				log.Printf("write %s: %v", o.out, werr)
			}
		}
		if o.doc != "" {
			if werr := replaceBetween(o.doc, "<!-- soak begin -->\n", "<!-- soak end -->", report); werr != nil {
				log.Printf("update %s: %v", o.doc, werr)
			}
		}
	}
	if err != nil {
		log.Fatal(err)
	}
	if r.failed() {
		log.Fatal("a check failed")
	}
}

// rng is the run's source of random choices (goroutines each take their
// own, seeded from it, so a run's choices do not depend on scheduling more
// than they must).
func newRand(seed uint64, stream uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, stream)) }

// replaceBetween replaces the text between the markers begin and end in
// the file at path.
func replaceBetween(path, begin, end, text string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		return fmt.Errorf("no %q … %q markers", strings.TrimSpace(begin), end)
	}
	return os.WriteFile(path, []byte(s[:i+len(begin)]+text+s[j:]), 0o644)
}
