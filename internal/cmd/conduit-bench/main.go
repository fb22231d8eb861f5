// Command conduit-bench measures Conduit against a raw pgx baseline doing the
// same work on the same database, in one run, and writes BENCHMARKS.md.
//
// It creates its own databases on the server named by DATABASE_URL (default:
// the local server), migrates them with conduit.Migrate and drops them at the
// end. Every measurement is repeated (alternating Conduit and baseline runs so
// that drift hits both) and reported as the median.
//
// Usage:
//
//	go run ./internal/cmd/conduit-bench -out BENCHMARKS.md
//	go run ./internal/cmd/conduit-bench -quick -only=append
//	go run ./internal/cmd/conduit-bench -quick -only=online -events 50000
//
// A workload is a function that adds figures to the results (see
// workloads). The end-to-end latency workload re-executes this binary as a
// child process that runs a projector (see latency.go); that mode is not a
// flag, so it does not show in -help.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"time"
)

const defaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// options are the command line settings every workload sees.
type options struct {
	url         string
	out         string
	quick       bool
	only        []string
	runs        int           // measured runs per variant
	duration    time.Duration // length of one timed append or stream-read run
	warmup      time.Duration // untimed run per variant before the measured ones
	readEvents  int           // size of the global log for the read workloads
	streamLen   int           // events in the stream read by read-stream
	catchUpRuns int           // runs of the long catch-up workloads (upsert handler)
	rebuildRuns int           // timed rebuilds
	latencyRun  time.Duration // length of one end-to-end latency run
	diagnose    bool          // also measure the diagnostic variants
	keep        bool          // keep the databases for inspection
	cpuProfile  string
}

func parseFlags() options {
	var o options
	var only string
	var events int
	flag.StringVar(&o.url, "db", cmp.Or(os.Getenv("DATABASE_URL"), defaultURL), "server URL (defaults to DATABASE_URL); the benchmark creates and drops its own databases there")
	flag.StringVar(&o.out, "out", "", "write the report to this file (default: stdout)")
	flag.BoolVar(&o.quick, "quick", false, "short run: fewer, shorter runs and a 100,000-event global log")
	flag.StringVar(&only, "only", "", "comma-separated workloads to run (default: all): "+strings.Join(workloadNames(), ", "))
	flag.IntVar(&o.runs, "runs", 0, "measured runs per variant (default 5, quick 3)")
	flag.DurationVar(&o.duration, "duration", 0, "length of one timed run (default 1.5s, quick 1s)")
	flag.BoolVar(&o.diagnose, "diagnose", true, "also measure diagnostic variants that split Conduit's cost")
	flag.IntVar(&events, "events", 0, "events in the shared global log (default 1,000,000, quick 100,000)")
	flag.BoolVar(&o.keep, "keep", false, "keep the benchmark databases instead of dropping them")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a Go CPU profile of the whole run to this file")
	flag.Parse()

	o.runs = cmp.Or(o.runs, 5)
	o.duration = cmp.Or(o.duration, 1500*time.Millisecond)
	o.warmup = time.Second
	o.readEvents, o.streamLen = 1_000_000, 10_000
	o.catchUpRuns, o.rebuildRuns, o.latencyRun = 2, 1, 4*time.Second
	if o.quick {
		o.catchUpRuns, o.latencyRun = 1, 2*time.Second
		o.runs = min(o.runs, 3)
		o.duration = min(o.duration, time.Second)
		o.warmup = 500 * time.Millisecond
		o.readEvents = 100_000
	}
	if events > 0 {
		o.readEvents = events
	}
	if only != "" {
		for name := range strings.SplitSeq(only, ",") {
			name = strings.TrimSpace(name)
			if !slices.Contains(workloadNames(), name) {
				log.Fatalf("conduit-bench: unknown workload %q (have %s)", name, strings.Join(workloadNames(), ", "))
			}
			o.only = append(o.only, name)
		}
	}
	return o
}

func main() {
	log.SetFlags(log.Ltime)
	if len(os.Args) > 1 && os.Args[1] == childCommand {
		if err := runChild(os.Args[2:]); err != nil {
			log.Printf("conduit-bench child: %v", err)
			os.Exit(1)
		}
		return
	}
	o := parseFlags()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, o)
	stop()
	if err != nil {
		log.Printf("conduit-bench: %v", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) (err error) {
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	srv, err := connectServer(ctx, o)
	if err != nil {
		return err
	}
	defer srv.close()
	defer srv.dropShared()
	env, err := srv.describe(ctx)
	if err != nil {
		return err
	}
	findServer(ctx, srv)

	rep := report{opts: o, env: env, started: time.Now(), loadBefore: srv.activity(ctx)}
	for _, w := range workloads {
		if len(o.only) > 0 && !slices.Contains(o.only, w.name) {
			continue
		}
		log.Printf("workload %s: %s", w.name, w.title)
		begin := time.Now()
		if err := w.run(ctx, srv, &rep.results); err != nil {
			return fmt.Errorf("workload %s: %w", w.name, err)
		}
		log.Printf("workload %s done in %s", w.name, time.Since(begin).Round(time.Second))
	}
	rep.elapsed = time.Since(rep.started)
	rep.loadAfter = srv.activity(ctx)

	text := rep.markdown()
	if o.out == "" {
		_, err = os.Stdout.WriteString(text)
		return err
	}
	if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
		return err
	}
	log.Printf("wrote %s (%s)", o.out, rep.elapsed.Round(time.Second))
	fmt.Print(rep.summary())
	return nil
}
