package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// soak is one run's shared state.
type soak struct {
	o      options
	dbURL  string
	pool   *pgxpool.Pool // the writers' pool
	admin  *pgxpool.Pool // faults and checks, on the soak database
	store  *conduit.Store
	names  []string // projection names
	mu     sync.Mutex
	kids   []*child
	acked  map[string]int64 // acknowledged event ids -> the version Append reported for the append
	counts counters
}

type counters struct {
	appends, events, resends, conflicts, duplicates atomic.Int64
	faults                                          sync.Map // kind -> *atomic.Int64
}

func (c *counters) fault(kind string) {
	v, _ := c.faults.LoadOrStore(kind, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

func run(ctx context.Context, o options) (*result, error) {
	res := &result{seed: o.seed, started: time.Now()}
	admin, err := pgx.Connect(ctx, o.url)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer admin.Close(context.Background())
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	dbName := "conduit_soak_" + hex.EncodeToString(b)
	ident := pgx.Identifier{dbName}.Sanitize()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
		return nil, fmt.Errorf("create database: %w", err)
	}
	defer func() {
		if o.keep {
			log.Printf("kept database %s", dbName)
			return
		}
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// A new connection: a restart during the run ended the first one.
		drop, err := pgx.Connect(dctx, o.url)
		if err == nil {
			defer drop.Close(context.Background())
			_, err = drop.Exec(dctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)")
		}
		if err != nil {
			log.Printf("drop %s: %v", dbName, err)
		}
	}()

	s := &soak{o: o, acked: map[string]int64{}}
	if s.dbURL, err = withDatabase(o.url, dbName); err != nil {
		return nil, err
	}
	if s.pool, err = s.newPool(ctx, "soak-writer", int32(o.writers)); err != nil {
		return nil, err
	}
	defer s.pool.Close()
	if s.admin, err = s.newPool(ctx, "soak-admin", 4); err != nil {
		return nil, err
	}
	defer s.admin.Close()
	if err := conduit.Migrate(ctx, s.admin); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	for i := range o.projections {
		name := fmt.Sprintf("p%d", i)
		s.names = append(s.names, name)
		if err := createReadTables(ctx, s.admin, name); err != nil {
			return nil, err
		}
	}
	if s.store, err = conduit.NewStore(s.pool, nil); err != nil {
		return nil, err
	}
	defer s.store.Close()

	for _, name := range s.names {
		for j := range o.instances {
			k := &child{s: s, projection: name, instance: fmt.Sprintf("%s-%d", name, j)}
			if err := k.start(); err != nil {
				return nil, err
			}
			s.kids = append(s.kids, k)
		}
	}
	defer s.stopChildren()
	log.Printf("database %s, seed %d: %d writers, %d projections x %d processes, %s", dbName, o.seed,
		o.writers, o.projections, o.instances, o.duration)

	// The load and the faults, for o.duration.
	loadCtx, stopLoad := context.WithTimeout(ctx, o.duration)
	defer stopLoad()
	var wg sync.WaitGroup
	writerErrs := make(chan error, o.writers)
	for w := range o.writers {
		wg.Go(func() { writerErrs <- s.writer(loadCtx, w) })
	}
	wg.Go(func() { s.faults(loadCtx) })
	wg.Wait()
	close(writerErrs)
	for err := range writerErrs {
		if err != nil {
			res.fail("writers", err.Error())
		}
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	res.loadEnded = time.Now()

	// Every child runs again (a paused one resumes, a killed one restarts),
	// then the projections catch up.
	if err := s.reviveChildren(); err != nil {
		return res, err
	}
	s.converge(ctx, res)
	s.check(ctx, res)
	s.collect(ctx, res)
	return res, nil
}

// newPool opens a pool on the soak database under an application name that
// the fault injector and the checks recognize.
func (s *soak) newPool(ctx context.Context, app string, size int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(s.dbURL)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	cfg.MaxConns = size
	return pgxpool.NewWithConfig(ctx, cfg)
}

// withDatabase returns url with its database replaced by name.
func withDatabase(url, name string) (string, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return "", err
	}
	c := cfg.ConnConfig
	host := c.Host
	if strings.HasPrefix(host, "/") {
		return fmt.Sprintf("host=%s port=%d user=%s dbname=%s", host, c.Port, c.User, name), nil
	}
	return fmt.Sprintf("postgres://%s:%s@%s:%d/%s?sslmode=disable", c.User, c.Password, host, c.Port, name), nil
}

// writer appends until ctx ends, resending the same events while the
// outcome is unknown, as a service would.
func (s *soak) writer(ctx context.Context, w int) error {
	rng := newRand(s.o.seed, uint64(w)+1)
	every := time.Duration(float64(time.Second) * float64(s.o.writers) / float64(max(s.o.rate, 1)))
	tick := time.NewTicker(every)
	defer tick.Stop()
	fresh := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		stream := fmt.Sprintf("s-%d", rng.IntN(s.o.streams))
		expected := conduit.Any
		switch n := rng.IntN(10); {
		case n < 3: // decided on the version it read
			v, err := s.store.StreamVersion(ctx, stream)
			if err != nil {
				if ctx.Err() != nil || conduit.IsOutcomeUnknown(err) {
					continue
				}
				return fmt.Errorf("writer %d: version of %s: %w", w, stream, err)
			}
			expected = conduit.Exactly(v)
		case n < 4: // a new stream
			fresh++
			stream = fmt.Sprintf("w%d-%d", w, fresh)
			expected = conduit.NoStream
		}
		events := make([]conduit.EventData, 1+rng.IntN(3))
		for i := range events {
			d := soakData{Amount: 1 + rng.Int64N(100)}
			if s.o.slowEvery > 0 && rng.IntN(s.o.slowEvery) == 0 {
				d.SlowMS = 1 + rng.Int64N(max(s.o.slowMax.Milliseconds(), 1))
			}
			events[i], _ = conduit.NewEvent("soaked", d)
		}
		res, err := s.appendResending(ctx, stream, expected, events)
		switch {
		case err == nil:
			s.counts.appends.Add(1)
			if res.Duplicate {
				s.counts.duplicates.Add(1)
			}
			s.counts.events.Add(int64(len(events)))
			s.mu.Lock()
			for i, e := range events {
				s.acked[e.ID.String()] = res.Version - int64(len(events)-1-i)
			}
			s.mu.Unlock()
		case errors.Is(err, conduit.ErrVersionConflict):
			s.counts.conflicts.Add(1) // a concurrent writer moved the stream: decide again next time
		case ctx.Err() != nil:
			return nil
		default:
			return fmt.Errorf("writer %d: append to %s with %s: %w", w, stream, expected, err)
		}
	}
}

// appendResending is the retry loop of ExampleIsOutcomeUnknown. A resend
// after the load ended goes on a little longer, so that no append is left
// with its outcome unknown.
func (s *soak) appendResending(ctx context.Context, stream string, expected conduit.ExpectedVersion, events []conduit.EventData) (conduit.AppendResult, error) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 60*time.Second)
	defer cancel()
	wait := 20 * time.Millisecond
	for {
		res, err := s.store.Append(actx, stream, expected, events...)
		if !conduit.IsOutcomeUnknown(err) || actx.Err() != nil {
			return res, err
		}
		s.counts.resends.Add(1)
		time.Sleep(wait)
		wait = min(2*wait, time.Second)
	}
}

// child is a projector process.
type child struct {
	s          *soak
	projection string
	instance   string

	cmd    *exec.Cmd
	paused bool
	done   chan struct{} // closed when the process has exited
}

func (k *child) start() error {
	k.cmd = exec.Command(os.Args[0], childCommand, "-db", k.s.dbURL, "-projection", k.projection,
		"-instance", k.instance, "-lease", k.s.o.lease.String())
	k.cmd.Stderr = &prefixWriter{prefix: k.instance + ": "}
	if _, err := k.cmd.StdinPipe(); err != nil { // closed when we exit: the child stops
		return err
	}
	if err := k.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", k.instance, err)
	}
	k.paused = false
	k.done = make(chan struct{})
	go func() { _ = k.cmd.Wait(); close(k.done) }()
	return nil
}

func (k *child) exited() bool {
	select {
	case <-k.done:
		return true
	default:
		return false
	}
}

// reviveChildren resumes paused children and restarts dead ones.
func (s *soak) reviveChildren() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.kids {
		if k.paused {
			_ = k.cmd.Process.Signal(syscall.SIGCONT)
			k.paused = false
		}
		if k.exited() {
			if err := k.start(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *soak) stopChildren() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.kids {
		if k.paused {
			_ = k.cmd.Process.Signal(syscall.SIGCONT)
		}
		_ = k.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, k := range s.kids {
		select {
		case <-k.done:
		case <-time.After(15 * time.Second):
			_ = k.cmd.Process.Kill()
			<-k.done
		}
	}
}

// prefixWriter writes a child's log lines to our stderr with its name.
type prefixWriter struct {
	prefix string
	mu     sync.Mutex
	buf    []byte
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			return len(p), nil
		}
		fmt.Fprintf(os.Stderr, "%s%s\n", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}
