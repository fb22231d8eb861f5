// Command relay-bench measures the outbox relay delivering into NATS
// JetStream, side by side with a plain loop publishing the same messages
// straight to JetStream, and appends its figures to a markdown file
// (`make bench` appends them to BENCHMARKS.md, after conduit-bench wrote
// it).
//
// It creates its own databases on the PostgreSQL server named by
// DATABASE_URL, migrates them with conduit.Migrate and drops them at the
// end; it creates its own streams on the NATS server named by NATS_URL
// (default nats://127.0.0.1:4222, with JetStream) and deletes them.
//
// Usage:
//
//	go -C conduitnats run ./internal/cmd/relay-bench -append ../BENCHMARKS.md
//	go -C conduitnats run ./internal/cmd/relay-bench -quick
//
// Three workloads: throughput (the relay draining a backlog against the
// plain loop, alternating, median of -runs each), latency (appends with an
// outbox rule at a light load, to a JetStream consumer), and size (the
// outbox's table and indexes before, during and after -size-messages
// messages enqueued while the relay keeps up).
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
	"strings"
	"time"

	"github.com/conduit-es/conduit"
)

const (
	defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	defaultNATSURL     = "nats://127.0.0.1:4222"
)

// options are the command line's settings.
type options struct {
	dbURL, natsURL string
	appendTo       string // markdown file to append the section to; "" prints it
	quick          bool
	runs           int           // measured runs per variant (throughput, latency)
	messages       int           // backlog of one throughput run
	batchSize      int           // the relay's BatchSize, and the plain loop's batches
	latencyRate    int           // appends per second in a latency run
	latencyRun     time.Duration // length of one latency run
	sizeMessages   int           // messages of the size run
	payloadBytes   int
	keys           int
	cpuProfile     string
	memProfile     string
	verbose        bool
	only           string // one workload: throughput, latency or size
	keep           bool   // keep the databases
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.dbURL, "db", cmp.Or(os.Getenv("DATABASE_URL"), defaultDatabaseURL), "PostgreSQL server URL (defaults to DATABASE_URL); the benchmark creates and drops its own databases there")
	flag.StringVar(&o.natsURL, "nats", cmp.Or(os.Getenv("NATS_URL"), defaultNATSURL), "NATS server URL with JetStream (defaults to NATS_URL); the benchmark creates and deletes its own streams")
	flag.StringVar(&o.appendTo, "append", "", "append the report's section to this markdown file, replacing the section if the file has it (default: print it)")
	flag.BoolVar(&o.quick, "quick", false, "short run: smaller backlogs, shorter latency runs, 250,000 messages for the size run")
	flag.IntVar(&o.runs, "runs", 5, "measured runs per variant (at least 3)")
	flag.IntVar(&o.messages, "messages", 0, "messages in the backlog of one throughput run (default 200,000; 50,000 with -quick)")
	flag.IntVar(&o.batchSize, "batch", 1000, "the relay's BatchSize, and the size of the plain loop's batches")
	flag.IntVar(&o.latencyRate, "latency-rate", 100, "appends per second in the latency runs")
	flag.DurationVar(&o.latencyRun, "latency-run", 0, "length of one latency run (default 10s; 3s with -quick)")
	flag.IntVar(&o.sizeMessages, "size-messages", 0, "messages of the size run (default 1,000,000; 250,000 with -quick)")
	flag.IntVar(&o.payloadBytes, "payload", 128, "payload bytes per message")
	flag.IntVar(&o.keys, "keys", 100, "distinct keys the messages are spread over")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process to the file")
	flag.StringVar(&o.memProfile, "memprofile", "", "write a profile of the allocations of this process to the file")
	flag.BoolVar(&o.verbose, "v", false, "log where the relay's time goes in each throughput run (time per statement and in Publish, per batch)")
	flag.StringVar(&o.only, "only", "", "run one workload only: throughput, latency or size (the report then lacks the others)")
	flag.BoolVar(&o.keep, "keep", false, "keep the databases for inspection (they are dropped by default)")
	flag.Parse()
	o.runs = max(o.runs, 3)
	if o.messages == 0 {
		o.messages = pick(o.quick, 50_000, 200_000)
	}
	if o.latencyRun == 0 {
		o.latencyRun = pick(o.quick, 3*time.Second, 10*time.Second)
	}
	if o.sizeMessages == 0 {
		o.sizeMessages = pick(o.quick, 250_000, 1_000_000)
	}
	return o
}

func pick[T any](quick bool, ifQuick, otherwise T) T {
	if quick {
		return ifQuick
	}
	return otherwise
}

func main() {
	log.SetFlags(log.Ltime)
	if err := profiled(parseFlags()); err != nil {
		log.Fatalf("relay-bench: %v", err)
	}
}

// profiled runs the benchmark, under the CPU profiler if asked.
func profiled(o options) error {
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
	if o.memProfile != "" {
		defer func() {
			f, err := os.Create(o.memProfile)
			if err != nil {
				log.Printf("memprofile: %v", err)
				return
			}
			defer f.Close()
			if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
				log.Printf("memprofile: %v", err)
			}
		}()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return run(ctx, o)
}

// runRelay runs relay until the function it returns is called, which
// returns Run's error.
func runRelay(ctx context.Context, relay *conduit.Relay) (stop func() error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	return func() error { cancel(); return <-done }
}

func run(ctx context.Context, o options) error {
	env, err := connect(ctx, o)
	if err != nil {
		return err
	}
	defer env.close()
	r := report{opts: o, started: time.Now(), natsVersion: env.nc.ConnectedServerVersion()}

	if o.only == "" || o.only == "throughput" {
		log.Printf("throughput: %d runs of a %d-message backlog, relay and plain loop alternating", o.runs, o.messages)
		if r.throughput, err = benchThroughput(ctx, env); err != nil {
			return fmt.Errorf("throughput: %w", err)
		}
	}
	if o.only == "" || o.only == "latency" {
		log.Printf("latency: %d runs of %s at %d appends/s", o.runs, o.latencyRun, o.latencyRate)
		if r.latency, err = benchLatency(ctx, env); err != nil {
			return fmt.Errorf("latency: %w", err)
		}
	}
	if o.only == "" || o.only == "size" {
		log.Printf("size: %d messages while the relay keeps up", o.sizeMessages)
		if r.size, err = benchSize(ctx, env); err != nil {
			return fmt.Errorf("size: %w", err)
		}
	}
	r.elapsed = time.Since(r.started)

	section := r.markdown()
	if o.appendTo == "" {
		fmt.Print(section)
		return nil
	}
	return appendSection(o.appendTo, section)
}

// appendSection appends section to the markdown file at path, or replaces
// the file's section of the same heading (up to the next "## " heading).
func appendSection(path, section string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	text := string(old)
	heading := section[:strings.Index(section, "\n")+1]
	if i := strings.Index(text, heading); i >= 0 {
		rest := text[i+len(heading):]
		end := len(text)
		if j := strings.Index(rest, "\n## "); j >= 0 {
			end = i + len(heading) + j + 1
		}
		text = text[:i] + text[end:]
	}
	if text != "" && !strings.HasSuffix(text, "\n\n") {
		text = strings.TrimRight(text, "\n") + "\n\n"
	}
	return os.WriteFile(path, []byte(text+section), 0o644)
}
