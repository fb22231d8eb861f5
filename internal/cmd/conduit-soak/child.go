package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

// soakData is the body of every event the writers append.
type soakData struct {
	Amount int64 `json:"amount"`
	SlowMS int64 `json:"slow_ms,omitempty"` // how long projecting it takes
}

// soakProjection applies events to its two read tables: one row per
// application (to count them and check their order) and a running total
// per stream (to compare with the log and with a rebuild).
type soakProjection struct {
	name string
	by   string
}

func (p *soakProjection) Name() string { return p.name }

func (p *soakProjection) ReadTables() []string {
	return []string{appliedTable(p.name), totalsTable(p.name)}
}

func (p *soakProjection) Apply(ctx context.Context, tx pgx.Tx, e conduit.Event) error {
	var d soakData
	if err := json.Unmarshal(e.Data, &d); err != nil {
		return err
	}
	if d.SlowMS > 0 {
		select { // a slow handler, Go side
		case <-time.After(time.Duration(d.SlowMS) * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+appliedTable(p.name)+` (event_id, stream_id, stream_version, applied_by)
		VALUES ($1, $2, $3, $4)`, e.ID, e.StreamID, e.StreamVersion, p.by); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO `+totalsTable(p.name)+` AS t (stream_id, events, last_version, amount)
		VALUES ($1, 1, $2, $3)
		ON CONFLICT (stream_id) DO UPDATE
		   SET events = t.events + 1, last_version = EXCLUDED.last_version, amount = t.amount + EXCLUDED.amount`,
		e.StreamID, e.StreamVersion, d.Amount)
	return err
}

func appliedTable(projection string) string {
	return pgx.Identifier{"soak", "applied_" + projection}.Sanitize()
}

func totalsTable(projection string) string {
	return pgx.Identifier{"soak", "totals_" + projection}.Sanitize()
}

// createReadTables creates a projection's read tables.
func createReadTables(ctx context.Context, pool *pgxpool.Pool, projection string) error {
	_, err := pool.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS soak;
		CREATE TABLE `+appliedTable(projection)+` (
			seq bigserial PRIMARY KEY, event_id uuid NOT NULL, stream_id text NOT NULL,
			stream_version bigint NOT NULL, applied_by text NOT NULL);
		CREATE TABLE `+totalsTable(projection)+` (
			stream_id text PRIMARY KEY, events bigint NOT NULL, last_version bigint NOT NULL, amount bigint NOT NULL)`)
	return err
}

// runChild is a projector process: it runs one projection until SIGTERM or
// until its stdin closes (the parent died).
func runChild(args []string) error {
	fs := flag.NewFlagSet(childCommand, flag.ContinueOnError)
	dbURL := fs.String("db", "", "database URL")
	name := fs.String("projection", "", "projection name")
	instance := fs.String("instance", "", "instance id")
	lease := fs.Duration("lease", 0, "LeaseDuration")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()

	cfg, err := pgxpool.ParseConfig(*dbURL)
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "soak-projector-" + *instance
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store, err := conduit.NewStore(pool, &conduit.Config{Logger: logger.With(slog.String("instance", *instance))})
	if err != nil {
		return err
	}
	defer store.Close()
	p, err := conduit.NewProjector(store, &soakProjection{name: *name, by: *instance}, &conduit.ProjectorConfig{
		InstanceID: *instance, LeaseDuration: *lease, PollInterval: 500 * time.Millisecond,
		RetryBackoff: 20 * time.Millisecond, MaxAttempts: 1000, // no poison events in the soak
	})
	if err != nil {
		return err
	}
	fmt.Println("started")
	if err := p.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
