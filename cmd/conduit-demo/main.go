// Command conduit-demo runs a small shop on Conduit: orders are event
// streams, a synchronous projection keeps SQL read tables in step inside
// each append's transaction, an asynchronous projector keeps another behind
// the log, and a report queries those tables.
//
// It uses its own database, conduit_demo, on the server of DATABASE_URL
// (default: the local server), creating it when missing. Each run adds new
// orders, so the report grows from run to run; -fresh starts over.
//
//	go run ./cmd/conduit-demo [-fresh] [-serve 127.0.0.1:9464]
//
// With -serve it then keeps an asynchronous projector running and serves
// Prometheus metrics on /metrics and the health check on /healthz until
// Ctrl-C.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

const (
	defaultServerURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	demoDatabase     = "conduit_demo"
)

func main() {
	fresh := flag.Bool("fresh", false, "drop and recreate the "+demoDatabase+" database first")
	serve := flag.String("serve", "", "after the tour, run a projector and serve /metrics and /healthz on this address (e.g. 127.0.0.1:9464) until Ctrl-C")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, *fresh, *serve)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "conduit-demo: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, fresh bool, serveAddr string) error {
	serverURL := os.Getenv("DATABASE_URL")
	if serverURL == "" {
		serverURL = defaultServerURL
	}
	pool, err := openDemoDB(ctx, serverURL, fresh)
	if err != nil {
		return err
	}
	defer pool.Close()

	if err := conduit.Migrate(ctx, pool); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, readTablesDDL); err != nil {
		return fmt.Errorf("create read tables: %w", err)
	}
	mp, metrics, err := newMetrics()
	if err != nil {
		return err
	}
	defer mp.Shutdown(context.Background()) //nolint:errcheck // nothing left to flush: Prometheus pulls
	store, err := conduit.NewStore(pool, &conduit.Config{
		Projections:   []conduit.Projection{shopProjection()},
		MeterProvider: mp,
	})
	if err != nil {
		return err
	}

	// Number the runs with a stream of their own, so every run writes new
	// order streams and re-running works without -fresh.
	started, err := conduit.NewEvent("demo_run_started", struct{}{})
	if err != nil {
		return err
	}
	res, err := store.Append(ctx, "demo-runs", conduit.Any, started)
	if err != nil {
		return err
	}
	d := &demo{store: store, run: res.Version}
	fmt.Printf("Conduit demo shop: database %s, run %d (-fresh starts over)\n", demoDatabase, d.run)

	for _, step := range []func(context.Context) error{
		d.placeOrders, d.conflict, d.idempotentRetry, d.entity, d.projectionRollback, d.asyncProjector, d.report,
	} {
		if err := step(ctx); err != nil {
			return err
		}
	}
	if serveAddr != "" {
		return d.serve(ctx, serveAddr, metrics)
	}
	return nil
}

// demo holds what the steps share.
type demo struct {
	store *conduit.Store
	run   int64
}

// stream names a customer's order stream in this run.
func (d *demo) stream(customer string) string {
	return fmt.Sprintf("order-%d-%s", d.run, customer)
}

func section(title string) { fmt.Printf("\n== %s ==\n", title) }

func (d *demo) placeOrders(ctx context.Context) error {
	section("1. Place orders: one append per order, projected in the same transaction")
	carts := []struct {
		customer string
		items    []item
	}{
		{"ada", []item{{"keyboard", 1, 4900}, {"mouse", 2, 1950}}},
		{"grace", []item{{"monitor", 1, 18900}, {"cable", 3, 499}}},
		{"linus", []item{{"keyboard", 1, 4900}}},
		{"barbara", []item{{"mouse", 1, 1950}, {"cable", 1, 499}}},
	}
	for _, c := range carts {
		evs, err := newEvents(orderPlaced, placed{Customer: c.customer})
		if err != nil {
			return err
		}
		for _, it := range c.items {
			if evs, err = appendEvent(evs, itemAdded, it); err != nil {
				return err
			}
		}
		// NoStream: placing the same order twice is a conflict, not a
		// second order.
		res, err := d.store.Append(ctx, d.stream(c.customer), conduit.NoStream, evs...)
		if err != nil {
			return err
		}
		var units int64
		for _, it := range c.items {
			units += it.Quantity
		}
		fmt.Printf("  %-18s placed, %s, stream version %d\n", d.stream(c.customer), items(units), res.Version)
	}
	var total int64
	if err := d.store.Pool().QueryRow(ctx, `SELECT total_cents FROM shop.orders WHERE order_id = $1`,
		d.stream("ada")).Scan(&total); err != nil {
		return err
	}
	fmt.Printf("  shop.orders already has %s's total: %s (no waiting, no polling)\n", d.stream("ada"), money(total))
	return nil
}

func (d *demo) conflict(ctx context.Context) error {
	section("2. Optimistic concurrency: two clerks write from the same version")
	id := d.stream("ada")
	o, version, err := orders.Load(ctx, d.store, id)
	if err != nil {
		return err
	}
	fmt.Printf("  both clerks load %s at version %d, total %s\n", id, version, money(o.TotalCents))

	extra, err := newEvents(itemAdded, item{"cable", 1, 499})
	if err != nil {
		return err
	}
	if _, err := d.store.Append(ctx, id, conduit.Exactly(version), extra...); err != nil {
		return err
	}
	fmt.Printf("  clerk A adds a cable with Exactly(%d): ok\n", version)

	payment, err := newEvents(orderPaid, paid{AmountCents: o.TotalCents})
	if err != nil {
		return err
	}
	_, err = d.store.Append(ctx, id, conduit.Exactly(version), payment...)
	var conflict *conduit.VersionConflictError
	if !errors.As(err, &conflict) {
		return fmt.Errorf("expected a version conflict, got %w", err)
	}
	fmt.Printf("  clerk B records a payment of %s with Exactly(%d): refused\n", money(o.TotalCents), version)
	fmt.Printf("    %T: stream %s, expected %s, actual %d\n", conflict, conflict.StreamID, conflict.Expected, conflict.Actual)
	fmt.Printf("    errors.Is(err, conduit.ErrVersionConflict) = %t, conduit.IsRetryable(err) = %t\n",
		errors.Is(err, conduit.ErrVersionConflict), conduit.IsRetryable(err))

	// Clerk B re-reads and decides again on the current state.
	o, version, err = orders.Load(ctx, d.store, id)
	if err != nil {
		return err
	}
	if payment, err = newEvents(orderPaid, paid{AmountCents: o.TotalCents}); err != nil {
		return err
	}
	res, err := d.store.Append(ctx, id, conduit.Exactly(version), payment...)
	if err != nil {
		return err
	}
	fmt.Printf("  clerk B reloads (version %d, total %s) and pays: ok, version %d\n", version, money(o.TotalCents), res.Version)
	return nil
}

func (d *demo) idempotentRetry(ctx context.Context) error {
	section("3. Idempotent retry: the same event ids again write nothing")
	id := d.stream("grace")
	o, version, err := orders.Load(ctx, d.store, id)
	if err != nil {
		return err
	}
	// Append writes the ids it makes for zero-id events back into this
	// slice, so retrying with the same slice re-sends the same ids.
	payment, err := newEvents(orderPaid, paid{AmountCents: o.TotalCents})
	if err != nil {
		return err
	}
	first, err := d.store.Append(ctx, id, conduit.Exactly(version), payment...)
	if err != nil {
		return err
	}
	fmt.Printf("  pay %s with Exactly(%d): version %d, duplicate %t\n", id, version, first.Version, first.Duplicate)
	fmt.Println("  ... the acknowledgement is lost; the client retries the same call")
	retry, err := d.store.Append(ctx, id, conduit.Exactly(version), payment...)
	if err != nil {
		return err
	}
	fmt.Printf("  retry: version %d, duplicate %t, same position %t\n", retry.Version, retry.Duplicate, retry.Position == first.Position)
	n, err := countEvents(ctx, d.store, id)
	if err != nil {
		return err
	}
	var status string
	if err := d.store.Pool().QueryRow(ctx, `SELECT status FROM shop.orders WHERE order_id = $1`, id).Scan(&status); err != nil {
		return err
	}
	fmt.Printf("  %s holds %d events; shop.orders says %q\n", id, n, status)

	// The same id somewhere else is not a retry but a mistake.
	_, err = d.store.Append(ctx, d.stream("barbara"), conduit.Any, payment...)
	var dup *conduit.DuplicateEventIDError
	if !errors.As(err, &dup) {
		return fmt.Errorf("expected a duplicate event id error, got %w", err)
	}
	fmt.Printf("  the same event id on %s: %T, already used by %s at version %d\n",
		d.stream("barbara"), dup, dup.StreamID, dup.Version)
	return nil
}

func (d *demo) entity(ctx context.Context) error {
	section("4. Entities: load state from events, decide, append at the loaded version")
	for _, step := range []struct {
		customer, what string
		decide         func(order) ([]conduit.EventData, error)
	}{
		{"ada", "ship", ship("DHL")},
		{"linus", "cancel", cancel("changed his mind")},
		{"linus", "ship", ship("UPS")},
	} {
		id := d.stream(step.customer)
		o, version, err := orders.Load(ctx, d.store, id)
		if err != nil {
			return err
		}
		fmt.Printf("  %s at version %d: %s, %s, %s\n", id, version, o.Status, items(o.Items), money(o.TotalCents))
		res, err := orders.Update(ctx, d.store, id, step.decide)
		switch {
		case errors.Is(err, errRefused):
			fmt.Printf("    %s: %v; nothing appended\n", step.what, err)
		case err != nil:
			return err
		default:
			fmt.Printf("    %s: ok, version %d\n", step.what, res.Version)
		}
	}
	return nil
}

func (d *demo) projectionRollback(ctx context.Context) error {
	section("5. A failing projection rolls the append back")
	id := d.stream("barbara")
	before, err := d.store.StreamVersion(ctx, id)
	if err != nil {
		return err
	}
	bad, err := newEvents(itemAdded, item{"mouse", 0, 1950})
	if err != nil {
		return err
	}
	_, err = d.store.Append(ctx, id, conduit.Exactly(before), bad...)
	var pe *conduit.ProjectionError
	if !errors.As(err, &pe) {
		return fmt.Errorf("expected a projection error, got %w", err)
	}
	var pgErr *pgconn.PgError
	cause := pe.Err.Error()
	if errors.As(pe.Err, &pgErr) {
		cause = pgErr.Message
	}
	fmt.Printf("  add 0 mice to %s: %T from %q on %s:\n    %s\n", id, pe, pe.Projection, pe.Event.Type, cause)
	after, err := d.store.StreamVersion(ctx, id)
	if err != nil {
		return err
	}
	fmt.Printf("  stream version before %d, after %d: the event was not stored either\n", before, after)
	return nil
}

func (d *demo) report(ctx context.Context) error {
	section("7. Report: plain SQL over the read tables (all runs)")
	// ReadAll follows the global log of every stream, as an async
	// projector would: only events below the safe horizon, in
	// (transaction id, global position) order.
	logged := 0
	for _, err := range d.store.ReadAll(ctx, conduit.Position{}) {
		if err != nil {
			return err
		}
		logged++
	}
	fmt.Printf("  The global log holds %d events (conduit.events, read with ReadAll)\n\n", logged)
	// A report is a read-only transaction with a statement_timeout: it
	// takes no transaction id, so it never holds back readers of the
	// global log, and the timeout keeps a runaway query short.
	return pgx.BeginTxFunc(ctx, d.store.Pool(), pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = '10s'`); err != nil {
			return err
		}
		revenue, err := queryTable(ctx, tx, `
			SELECT l.product, sum(l.quantity), sum(l.quantity * l.price_cents)
			  FROM shop.order_lines l JOIN shop.orders o USING (order_id)
			 WHERE o.status IN ('paid', 'shipped')
			 GROUP BY l.product
			 ORDER BY 3 DESC, 1`)
		if err != nil {
			return err
		}
		fmt.Println("  Revenue per product (paid and shipped orders)")
		printTable([]string{"product", "units", "revenue"}, revenue)

		statuses, err := queryTable(ctx, tx, `
			SELECT status, count(*), sum(total_cents)
			  FROM shop.orders
			 GROUP BY status
			 ORDER BY status`)
		if err != nil {
			return err
		}
		fmt.Println("\n  Orders per status")
		printTable([]string{"status", "orders", "value"}, statuses)
		return nil
	})
}

// queryTable runs a query returning (text, count, cents) rows.
func queryTable(ctx context.Context, tx pgx.Tx, sql string) ([][]string, error) {
	rows, err := tx.Query(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	var out [][]string
	var (
		name         string
		count, cents int64
	)
	_, err = pgx.ForEachRow(rows, []any{&name, &count, &cents}, func() error {
		out = append(out, []string{name, fmt.Sprint(count), money(cents)})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	return out, nil
}

// printTable prints rows under headers, the first column left-aligned and
// the others right-aligned.
func printTable(headers []string, rows [][]string) {
	widths := make([]int, len(headers))
	for _, r := range append([][]string{headers}, rows...) {
		for i, cell := range r {
			widths[i] = max(widths[i], len(cell))
		}
	}
	line := func(r []string) {
		var b strings.Builder
		b.WriteString("  ")
		for i, cell := range r {
			if i == 0 {
				fmt.Fprintf(&b, "  %-*s", widths[i], cell)
			} else {
				fmt.Fprintf(&b, "  %*s", widths[i], cell)
			}
		}
		fmt.Println(b.String())
	}
	line(headers)
	rule := make([]string, len(headers))
	for i, w := range widths {
		rule[i] = strings.Repeat("-", w)
	}
	line(rule)
	for _, r := range rows {
		line(r)
	}
}

// openDemoDB makes sure the demo database exists on the server of
// serverURL (recreating it with fresh) and returns a pool on it.
func openDemoDB(ctx context.Context, serverURL string, fresh bool) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(serverURL)
	if err != nil {
		return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	admin, err := pgx.ConnectConfig(ctx, cfg.ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("cannot reach PostgreSQL at %s: %w\n(start the server, or point DATABASE_URL at one)", redact(serverURL), err)
	}
	defer admin.Close(context.Background())

	quoted := pgx.Identifier{demoDatabase}.Sanitize()
	if fresh {
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+quoted+" WITH (FORCE)"); err != nil {
			return nil, fmt.Errorf("drop database %s: %w", demoDatabase, err)
		}
	}
	var exists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, demoDatabase).Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		_, err := admin.Exec(ctx, "CREATE DATABASE "+quoted)
		var pgErr *pgconn.PgError
		if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "42P04") { // duplicate_database: a concurrent run made it
			return nil, fmt.Errorf("create database %s: %w", demoDatabase, err)
		}
	}
	cfg.ConnConfig.Database = demoDatabase
	return pgxpool.NewWithConfig(ctx, cfg)
}

// redact hides a password in a URL-form connection string.
func redact(connString string) string {
	if u, err := url.Parse(connString); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return "DATABASE_URL"
}

func newEvents(eventType string, v any) ([]conduit.EventData, error) {
	return appendEvent(nil, eventType, v)
}

func appendEvent(evs []conduit.EventData, eventType string, v any) ([]conduit.EventData, error) {
	e, err := conduit.NewEvent(eventType, v)
	if err != nil {
		return nil, err
	}
	return append(evs, e), nil
}

func countEvents(ctx context.Context, store *conduit.Store, streamID string) (int, error) {
	n := 0
	for _, err := range store.ReadStream(ctx, streamID, 1) {
		if err != nil {
			return 0, err
		}
		n++
	}
	return n, nil
}

func money(cents int64) string { return fmt.Sprintf("%d.%02d", cents/100, cents%100) }

func items(n int64) string {
	if n == 1 {
		return "1 item"
	}
	return fmt.Sprintf("%d items", n)
}
