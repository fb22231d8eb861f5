package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/conduitnats"
)

// env is the servers the benchmark runs against.
type env struct {
	opts  options
	admin *pgx.Conn
	nc    *nats.Conn
	js    jetstream.JetStream
	dbs   int // databases made so far, for their names
	// payload is every message's payload (opts.payloadBytes); never
	// written after connect.
	payload []byte
}

func connect(ctx context.Context, o options) (*env, error) {
	admin, err := pgx.Connect(ctx, o.dbURL)
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %w", o.dbURL, err)
	}
	nc, err := nats.Connect(o.natsURL, nats.Name("relay-bench"), nats.MaxReconnects(-1))
	if err != nil {
		admin.Close(ctx)
		return nil, fmt.Errorf("connect to NATS at %s: %w", o.natsURL, err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(conduitnats.AckTimeoutDefault))
	if err != nil {
		nc.Close()
		admin.Close(ctx)
		return nil, err
	}
	payload := make([]byte, o.payloadBytes)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	return &env{opts: o, admin: admin, nc: nc, js: js, payload: payload}, nil
}

func (e *env) close() {
	e.nc.Close()
	e.admin.Close(context.Background())
}

// benchDB is a fresh, migrated database.
type benchDB struct {
	env  *env
	name string
	cfg  *pgxpool.Config
}

// freshDB creates and migrates a database of its own.
func (e *env) freshDB(ctx context.Context, what string) (*benchDB, error) {
	e.dbs++
	name := fmt.Sprintf("relaybench_%d_%s_%d", os.Getpid(), what, e.dbs)
	if _, err := e.admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, fmt.Errorf("create database %s: %w", name, err)
	}
	cfg, err := pgxpool.ParseConfig(e.opts.dbURL)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.Database = name
	db := &benchDB{env: e, name: name, cfg: cfg}
	pool, err := db.pool(ctx, 2, nil)
	if err != nil {
		db.drop()
		return nil, err
	}
	defer pool.Close()
	if err := conduit.Migrate(ctx, pool); err != nil {
		db.drop()
		return nil, fmt.Errorf("migrate %s: %w", name, err)
	}
	return db, nil
}

// pool returns a pool of up to conns connections on the database, with
// tracer on each (nil: none).
func (db *benchDB) pool(ctx context.Context, conns int, tracer pgx.QueryTracer) (*pgxpool.Pool, error) {
	cfg := db.cfg.Copy()
	cfg.MaxConns = int32(conns)
	cfg.ConnConfig.Tracer = tracer
	return pgxpool.NewWithConfig(ctx, cfg)
}

// store returns a store on a pool of its own; close both with the
// function returned.
func (db *benchDB) store(ctx context.Context, conns int, tracer pgx.QueryTracer, cfg *conduit.Config) (*conduit.Store, func(), error) {
	pool, err := db.pool(ctx, conns, tracer)
	if err != nil {
		return nil, nil, err
	}
	store, err := conduit.NewStore(pool, cfg)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return store, func() { store.Close(); pool.Close() }, nil
}

func (db *benchDB) drop() {
	if db.env.opts.keep {
		log.Printf("kept database %s", db.name)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, _ = db.env.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{db.name}.Sanitize()+" WITH (FORCE)")
}

// stream is a JetStream stream of the benchmark's own, bound to name.>.
type stream struct {
	jetstream.Stream
	name string
}

func (e *env) newStream(ctx context.Context) (*stream, error) {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "RELAYBENCH_" + hex.EncodeToString(b)
	s, err := e.js.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{name + ".>"}})
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", name, err)
	}
	return &stream{Stream: s, name: name}, nil
}

func (s *stream) prefix() string { return s.name + "." }

func (e *env) deleteStream(s *stream) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = e.js.DeleteStream(ctx, s.name)
}

// storedCount returns how many messages the stream holds.
func (s *stream) storedCount(ctx context.Context) (uint64, error) {
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// publisher returns a conduitnats publisher for s, with its defaults.
func (e *env) publisher(s *stream) (*conduitnats.Publisher, error) {
	return conduitnats.NewPublisher(e.js, &conduitnats.Config{SubjectPrefix: s.prefix()})
}

// messages returns messages from, from+1, ... from+n-1 of a run: spread
// over the option's keys (message i's key is i modulo keys), with payloads of
// the option's size.
func (e *env) messages(from, n int) []conduit.Message {
	msgs := make([]conduit.Message, n)
	for i := range msgs {
		msgs[i] = conduit.NewMessage("deposits", "account-"+strconv.Itoa((from+i)%e.opts.keys), e.payload)
	}
	return msgs
}

// enqueue enqueues msgs, a transaction per batch of 1,000.
func enqueue(ctx context.Context, store *conduit.Store, msgs []conduit.Message) error {
	for len(msgs) > 0 {
		n := min(len(msgs), 1000)
		if err := store.Enqueue(ctx, msgs[:n]...); err != nil {
			return err
		}
		msgs = msgs[n:]
	}
	return nil
}

// statementCounter counts the statements a pool runs, and the time they
// take by name (the sqlc query's, else the first word).
type statementCounter struct {
	n  atomic.Int64
	mu sync.Mutex
	by map[string]time.Duration
}

type startKey struct{}

type started struct {
	at   time.Time
	name string
}

func (c *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	name, _, _ := strings.Cut(strings.TrimPrefix(data.SQL, "-- name: "), " ")
	return context.WithValue(ctx, startKey{}, started{at: time.Now(), name: name})
}

func (c *statementCounter) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	s, ok := ctx.Value(startKey{}).(started)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.by == nil {
		c.by = map[string]time.Duration{}
	}
	c.by[s.name] += time.Since(s.at)
}

// reset zeroes the counts and returns the time by statement since the
// last reset.
func (c *statementCounter) reset() map[string]time.Duration {
	c.n.Store(0)
	c.mu.Lock()
	defer c.mu.Unlock()
	by := c.by
	c.by = nil
	return by
}
