package conduit_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/conduit-es/conduit"
)

// The examples run against a real PostgreSQL: each gets a new database on
// DATABASE_URL's server and drops it afterwards. Without a server an
// example prints why, its output differs from the expected one, and
// `go test` fails with that message: an example that did not run never
// passes.

// exampleStore returns a Store on a new, migrated database and a func that
// drops the database. On failure it prints why and returns ok false.
func exampleStore(cfg *conduit.Config) (store *conduit.Store, done func(), ok bool) {
	pool, done, ok := exampleDatabase()
	if !ok {
		return nil, nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := conduit.Migrate(ctx, pool)
	if err == nil {
		store, err = conduit.NewStore(pool, cfg)
	}
	if err != nil {
		done()
		fmt.Println("example database: migrate:", err)
		return nil, nil, false
	}
	return store, done, true
}

// exampleDatabase returns a pool on a new, empty database and a func that
// closes the pool and drops the database. On failure it prints why and
// returns ok false.
func exampleDatabase() (pool *pgxpool.Pool, done func(), ok bool) {
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		fmt.Println("example needs PostgreSQL: set DATABASE_URL (make test sets it)")
		return nil, nil, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fail := func(what string, err error) (*pgxpool.Pool, func(), bool) {
		fmt.Printf("example database: %s: %v\n", what, err)
		return nil, nil, false
	}

	poolCfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return fail("parse DATABASE_URL", err)
	}
	admin, err := pgx.ConnectConfig(ctx, poolCfg.ConnConfig.Copy())
	if err != nil {
		return fail("connect", err)
	}
	name := exampleDBName()
	quoted := pgx.Identifier{name}.Sanitize()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+quoted); err != nil {
		admin.Close(context.Background())
		return fail("create", err)
	}
	poolCfg.ConnConfig.Database = name
	pool, err = pgxpool.NewWithConfig(ctx, poolCfg)
	done = func() {
		if pool != nil {
			pool.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+quoted+" WITH (FORCE)"); err != nil {
			fmt.Printf("example database: drop %s: %v\n", name, err)
		}
		admin.Close(ctx)
	}
	if err != nil {
		done()
		return fail("connect to "+name, err)
	}
	return pool, done, true
}

// exampleDBName returns a new database name.
func exampleDBName() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return "conduit_example_" + hex.EncodeToString(b)
}

// NewEvent fails only for values encoding/json cannot marshal; the
// examples' maps and structs always marshal, hence the ignored errors.

func ExampleStore_Append() {
	store, done, ok := exampleStore(nil)
	if !ok {
		return
	}
	defer done()
	ctx := context.Background()

	placed, _ := conduit.NewEvent("order_placed", map[string]string{"customer": "ada"})
	added, _ := conduit.NewEvent("item_added", map[string]any{"product": "keyboard", "quantity": 1})
	res, err := store.Append(ctx, "order-1", conduit.NoStream, placed, added)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("version:", res.Version)

	// A writer that decided on version 1 is refused: the stream moved on.
	paid, _ := conduit.NewEvent("order_paid", map[string]int{"amount_cents": 4900})
	_, err = store.Append(ctx, "order-1", conduit.Exactly(1), paid)
	var conflict *conduit.VersionConflictError
	if errors.As(err, &conflict) {
		fmt.Println("conflict: expected", conflict.Expected, "actual", conflict.Actual)
	}
	fmt.Println(err)
	fmt.Println("retryable:", conduit.IsRetryable(err))
	// Output:
	// version: 2
	// conflict: expected 1 actual 2
	// conduit: version conflict on stream "order-1": expected 1, actual 2
	// retryable: true
}

func ExampleStore_Append_idempotentRetry() {
	store, done, ok := exampleStore(nil)
	if !ok {
		return
	}
	defer done()
	ctx := context.Background()

	// Append gives events with a zero ID a fresh id, written back into the
	// slice: sending the same slice again is an idempotent retry.
	events := make([]conduit.EventData, 1)
	events[0], _ = conduit.NewEvent("order_paid", map[string]int{"amount_cents": 4900})
	first, err := store.Append(ctx, "order-1", conduit.NoStream, events...)
	if err != nil {
		fmt.Println(err)
		return
	}
	// The acknowledgement was lost; the client does not know whether the
	// append committed, and retries.
	retry, err := store.Append(ctx, "order-1", conduit.NoStream, events...)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("first:", first.Version, "duplicate:", first.Duplicate)
	fmt.Println("retry:", retry.Version, "duplicate:", retry.Duplicate)
	// Output:
	// first: 1 duplicate: false
	// retry: 1 duplicate: true
}

func ExampleStore_ReadStream() {
	store, done, ok := exampleStore(nil)
	if !ok {
		return
	}
	defer done()
	ctx := context.Background()

	placed, _ := conduit.NewEvent("order_placed", map[string]string{"customer": "ada"})
	added, _ := conduit.NewEvent("item_added", map[string]any{"product": "mouse", "quantity": 2})
	paid, _ := conduit.NewEvent("order_paid", map[string]int{"amount_cents": 3900})
	if _, err := store.Append(ctx, "order-1", conduit.NoStream, placed, added, paid); err != nil {
		fmt.Println(err)
		return
	}

	// From version 2 on. Data comes back as PostgreSQL's jsonb prints it.
	for e, err := range store.ReadStream(ctx, "order-1", 2) {
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(e.StreamVersion, e.Type, string(e.Data))
	}
	// Output:
	// 2 item_added {"product": "mouse", "quantity": 2}
	// 3 order_paid {"amount_cents": 3900}
}

func ExampleStore_ReadAll() {
	store, done, ok := exampleStore(nil)
	if !ok {
		return
	}
	defer done()
	ctx := context.Background()

	for _, stream := range []string{"order-1", "order-2"} {
		placed, _ := conduit.NewEvent("order_placed", map[string]string{})
		if _, err := store.Append(ctx, stream, conduit.NoStream, placed); err != nil {
			fmt.Println(err)
			return
		}
	}
	paid, _ := conduit.NewEvent("order_paid", map[string]string{})
	res, err := store.Append(ctx, "order-1", conduit.Exactly(1), paid)
	if err != nil {
		fmt.Println(err)
		return
	}
	// ReadAll stops short of events while an older write transaction
	// anywhere in the cluster is still open; wait that out so that this
	// example's output is fixed.
	exampleSettle(store, res.Position)

	// The global log, from the start. A reader that stops keeps the last
	// Position it saw and resumes after it.
	var last conduit.Position
	for e, err := range store.ReadAll(ctx, conduit.Position{}) {
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(e.StreamID, e.StreamVersion, e.Type)
		last = e.Position
	}
	more := 0
	for range store.ReadAll(ctx, last) {
		more++
	}
	fmt.Println("after the last position:", more)
	// Output:
	// order-1 1 order_placed
	// order-2 1 order_placed
	// order-1 2 order_paid
	// after the last position: 0
}

func ExampleOn() {
	type itemAdded struct {
		Product  string `json:"product"`
		Quantity int    `json:"quantity"`
	}
	// A synchronous projection: it runs inside each append's transaction,
	// so the read table is up to date when Append returns.
	items := conduit.NewRouter("cart_items", "shop.cart_items")
	conduit.On(items, "item_added", func(ctx context.Context, tx pgx.Tx, e conduit.Event, d itemAdded) error {
		_, err := tx.Exec(ctx, `INSERT INTO shop.cart_items (cart, product, quantity) VALUES ($1, $2, $3)
			ON CONFLICT (cart, product) DO UPDATE SET quantity = cart_items.quantity + excluded.quantity`,
			e.StreamID, d.Product, d.Quantity)
		return err
	})

	store, done, ok := exampleStore(&conduit.Config{Projections: []conduit.Projection{items}})
	if !ok {
		return
	}
	defer done()
	ctx := context.Background()
	if _, err := store.Pool().Exec(ctx, `CREATE SCHEMA shop;
		CREATE TABLE shop.cart_items (cart text, product text, quantity int, PRIMARY KEY (cart, product))`); err != nil {
		fmt.Println(err)
		return
	}

	mouse, _ := conduit.NewEvent("item_added", itemAdded{Product: "mouse", Quantity: 1})
	cable, _ := conduit.NewEvent("item_added", itemAdded{Product: "cable", Quantity: 3})
	another, _ := conduit.NewEvent("item_added", itemAdded{Product: "mouse", Quantity: 1})
	opened, _ := conduit.NewEvent("cart_opened", struct{}{}) // no handler: ignored
	if _, err := store.Append(ctx, "cart-1", conduit.NoStream, opened, mouse, cable, another); err != nil {
		fmt.Println(err)
		return
	}

	rows, err := store.Pool().Query(ctx, `SELECT product, quantity FROM shop.cart_items ORDER BY product`)
	if err != nil {
		fmt.Println(err)
		return
	}
	var (
		product  string
		quantity int
	)
	_, err = pgx.ForEachRow(rows, []any{&product, &quantity}, func() error {
		fmt.Println(product, quantity)
		return nil
	})
	if err != nil {
		fmt.Println(err)
	}
	// Output:
	// cable 3
	// mouse 2
}

func ExampleEntity_Update() {
	store, done, ok := exampleStore(nil)
	if !ok {
		return
	}
	defer done()
	ctx := context.Background()

	type account struct{ Balance int64 }
	type amount struct {
		Cents int64 `json:"cents"`
	}
	accounts := conduit.Entity[account]{
		// Evolve returns the state after one event.
		Evolve: func(a account, e conduit.Event) (account, error) {
			var d amount
			if err := json.Unmarshal(e.Data, &d); err != nil {
				return a, err
			}
			switch e.Type {
			case "deposited":
				a.Balance += d.Cents
			case "withdrawn":
				a.Balance -= d.Cents
			}
			return a, nil
		},
	}
	// withdraw decides: the events to append, or an error.
	errInsufficientFunds := errors.New("insufficient funds")
	withdraw := func(cents int64) func(account) ([]conduit.EventData, error) {
		return func(a account) ([]conduit.EventData, error) {
			if a.Balance < cents {
				return nil, errInsufficientFunds
			}
			e, err := conduit.NewEvent("withdrawn", amount{Cents: cents})
			return []conduit.EventData{e}, err
		}
	}

	deposit, _ := conduit.NewEvent("deposited", amount{Cents: 10000})
	if _, err := store.Append(ctx, "account-1", conduit.NoStream, deposit); err != nil {
		fmt.Println(err)
		return
	}

	// Update loads the state, decides, and appends at the loaded version,
	// reloading and deciding again if another writer got there first.
	res, err := accounts.Update(ctx, store, "account-1", withdraw(3000))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("withdrew 3000, version", res.Version)
	_, err = accounts.Update(ctx, store, "account-1", withdraw(9000))
	fmt.Println("withdraw 9000:", err)

	acct, version, err := accounts.Load(ctx, store, "account-1")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("balance", acct.Balance, "at version", version)
	// Output:
	// withdrew 3000, version 2
	// withdraw 9000: insufficient funds
	// balance 7000 at version 2
}

// Running Conduit's migrations from your own goose pipeline: give them their
// own version table, apart from your goose_db_version.
func ExampleMigrations() {
	pool, done, ok := exampleDatabase()
	if !ok {
		return
	}
	defer done()
	ctx := context.Background()
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()

	// goose creates its version table before the first migration runs:
	// create the schema that holds it first.
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS conduit"); err != nil {
		fmt.Println(err)
		return
	}
	provider, err := goose.NewProvider(goose.DialectPostgres, db, conduit.Migrations(),
		goose.WithTableName(conduit.MigrationTable))
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := provider.Up(ctx); err != nil {
		fmt.Println(err)
		return
	}

	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass('conduit.events') IS NOT NULL").Scan(&exists); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("conduit.events exists:", exists)
	// Output:
	// conduit.events exists: true
}

// exampleSettle waits until no transaction older than pos is running, so
// that ReadAll reaches pos.
func exampleSettle(store *conduit.Store, pos conduit.Position) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for ctx.Err() == nil {
		var passed bool
		err := store.Pool().QueryRow(ctx,
			`SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::text::xid8`, fmt.Sprint(pos.TransactionID)).Scan(&passed)
		if err != nil || passed {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}
