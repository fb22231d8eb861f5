package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"runtime"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// server is the PostgreSQL server the benchmark creates its databases on.
type server struct {
	opts  options
	admin *pgx.Conn

	// shared is the database holding the loaded global log (opts.readEvents
	// events) that the read and catch-up workloads share; made on first use.
	shared *benchDB
	// lastPosition is the position of the shared log's last event.
	lastPosition conduit.Position
}

func connectServer(ctx context.Context, o options) (*server, error) {
	admin, err := pgx.Connect(ctx, o.url)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", o.url, err)
	}
	return &server{opts: o, admin: admin}, nil
}

func (s *server) close() { s.admin.Close(context.Background()) }

// logDB returns the database with the loaded global log, making and loading
// it on first use: opts.readEvents events, opts.streamLen of them in
// longStream, the rest in 1000-event streams (see loadLog).
func (s *server) logDB(ctx context.Context) (*benchDB, error) {
	if s.shared != nil {
		return s.shared, nil
	}
	db, err := s.freshDB(ctx, "log")
	if err != nil {
		return nil, err
	}
	pool, err := db.pool(ctx, 2)
	if err != nil {
		db.drop()
		return nil, err
	}
	defer pool.Close()
	if err := loadLog(ctx, pool, s.opts.readEvents, s.opts.streamLen); err != nil {
		db.drop()
		return nil, err
	}
	if err := pool.QueryRow(ctx, `
		SELECT transaction_id::text::bigint, global_position FROM conduit.events
		 ORDER BY transaction_id DESC, global_position DESC LIMIT 1`).
		Scan(&s.lastPosition.TransactionID, &s.lastPosition.GlobalPosition); err != nil {
		db.drop()
		return nil, err
	}
	s.shared = db
	return db, nil
}

// dropShared drops the shared log database, if it was made.
func (s *server) dropShared() {
	if s.shared != nil {
		s.shared.drop()
		s.shared = nil
	}
}

// benchDB is one fresh, migrated database with the raw baseline table.
type benchDB struct {
	srv  *server
	name string
}

// baselineTableDDL makes the raw baseline table: conduit.events' columns,
// defaults, identity, CHECK constraints and indexes (primary key
// (transaction_id, global_position), UNIQUE (stream_id, stream_version),
// UNIQUE (event_id)), without Conduit's triggers and function; and the
// minimal baseline table: the same columns, an identity primary key and
// UNIQUE (stream_id, stream_version) only (what a store needs at least to
// check versions), no transaction id.
const baselineTableDDL = `
CREATE SCHEMA bench;
CREATE TABLE bench.raw_events (LIKE conduit.events INCLUDING ALL);
CREATE TABLE bench.min_events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id       text NOT NULL,
    stream_version  bigint NOT NULL,
    event_id        uuid NOT NULL,
    event_type      text NOT NULL,
    data            jsonb NOT NULL,
    metadata        jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, stream_version)
);`

// freshDB creates database conduit_bench_<suffix> (dropping a leftover one),
// migrates it and adds the baseline table.
func (s *server) freshDB(ctx context.Context, suffix string) (*benchDB, error) {
	name := "conduit_bench_" + suffix
	ident := pgx.Identifier{name}.Sanitize()
	if _, err := s.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		return nil, err
	}
	if _, err := s.admin.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
		return nil, err
	}
	db := &benchDB{srv: s, name: name}
	pool, err := db.pool(ctx, 1)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	if err := conduit.Migrate(ctx, pool); err != nil {
		return nil, fmt.Errorf("migrate %s: %w", name, err)
	}
	if _, err := pool.Exec(ctx, baselineTableDDL); err != nil {
		return nil, fmt.Errorf("baseline table: %w", err)
	}
	return db, nil
}

// drop removes the database unless -keep was given.
func (db *benchDB) drop() {
	if db.srv.opts.keep {
		log.Printf("kept database %s", db.name)
		return
	}
	ident := pgx.Identifier{db.name}.Sanitize()
	if _, err := db.srv.admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		log.Printf("drop database %s: %v", db.name, err)
	}
}

// pool opens a pool of exactly size connections, all connected up front so
// that no timed run pays for a connection.
func (db *benchDB) pool(ctx context.Context, size int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(db.srv.opts.url)
	if err != nil {
		return nil, err
	}
	cfg.ConnConfig.Database = db.name
	cfg.MaxConns = int32(size)
	cfg.MinConns = int32(size)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	conns := make([]*pgxpool.Conn, size)
	for i := range conns {
		if conns[i], err = pool.Acquire(ctx); err != nil {
			pool.Close()
			return nil, err
		}
	}
	for _, c := range conns {
		c.Release()
	}
	return pool, nil
}

// environment is what the report says about the machine and the server.
type environment struct {
	cpu      string
	cores    int
	goVer    string
	settings [][2]string
}

// activity is how busy the machine and the server were besides us: the
// benchmark shares both with whatever else runs there.
func (s *server) activity(ctx context.Context) string {
	load := "unknown"
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	var others int
	err := s.admin.QueryRow(ctx, `
		SELECT count(*) FROM pg_stat_activity
		 WHERE backend_type = 'client backend' AND state = 'active'
		   AND pid <> pg_backend_pid() AND datname NOT LIKE 'conduit\_bench\_%'`).Scan(&others)
	if err != nil {
		return "load average " + load
	}
	return fmt.Sprintf("load average %s, %d other active sessions on the server", load, others)
}

// shownSettings are the server settings that move append and read figures.
var shownSettings = []string{
	"server_version", "synchronous_commit", "fsync", "wal_sync_method", "full_page_writes",
	"commit_delay", "shared_buffers", "wal_buffers", "max_wal_size", "checkpoint_timeout",
	"work_mem", "jit",
}

func (s *server) describe(ctx context.Context) (environment, error) {
	env := environment{cores: runtime.NumCPU(), goVer: runtime.Version(), cpu: cpuModel()}
	for _, name := range shownSettings {
		var v string
		if err := s.admin.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			return env, fmt.Errorf("read setting %s: %w", name, err)
		}
		env.settings = append(env.settings, [2]string{name, v})
	}
	return env, nil
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
