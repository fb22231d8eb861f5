package conduit_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// The examples run against a real PostgreSQL: each gets a new database on
// the tests' server (DATABASE_URL, else a local server at the libpq
// defaults, see internal/pgtest) and drops it afterwards. Without a server an
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
	url, _, err := pgtest.Server()
	if err != nil {
		fmt.Println("example needs PostgreSQL (set DATABASE_URL):", err)
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
		return fail("parse the server's URL", err)
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

	// NewEvent gives each event its id: sending the same events again is an
	// idempotent retry.
	a, _ := conduit.NewEvent("order_placed", map[string]string{"customer": "ada"})
	b, _ := conduit.NewEvent("order_paid", map[string]int{"amount_cents": 4900})
	first, err := store.Append(ctx, "order-1", conduit.NoStream, a, b)
	if err != nil {
		fmt.Println(err)
		return
	}
	// The acknowledgement was lost; the client does not know whether the
	// append committed, and sends the same events again.
	retry, err := store.Append(ctx, "order-1", conduit.NoStream, a, b)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("first:", first.Version, "duplicate:", first.Duplicate)
	fmt.Println("retry:", retry.Version, "duplicate:", retry.Duplicate)
	// Output:
	// first: 2 duplicate: false
	// retry: 2 duplicate: true
}

// The retry loop a service writes around Append: while the outcome is
// unknown (a lost connection, a server restart, a deadlock), resend the same
// events, whose ids make that safe; when the store refuses (a concurrent
// writer moved the stream on), reload, decide again and append the new
// decision.
func ExampleIsOutcomeUnknown() {
	store, done, ok := exampleStore(nil)
	if !ok {
		return
	}
	defer done()
	ctx := context.Background()
	opened, _ := conduit.NewEvent("account_opened", map[string]int{"balance": 0})
	if _, err := store.Append(ctx, "account-7", conduit.NoStream, opened); err != nil {
		fmt.Println(err)
		return
	}

	// decide reads the stream's version and decides on a deposit. A
	// concurrent writer gets in between on the first attempt.
	attempts := 0
	decide := func() (int64, []conduit.EventData, error) {
		attempts++
		version, err := store.StreamVersion(ctx, "account-7")
		if attempts == 1 {
			other, _ := conduit.NewEvent("fee_charged", map[string]int{"amount": 1})
			_, _ = store.Append(ctx, "account-7", conduit.Any, other)
		}
		deposit, _ := conduit.NewEvent("deposited", map[string]int{"amount": 100})
		return version, []conduit.EventData{deposit}, err
	}

	var res conduit.AppendResult
	for range 5 {
		version, events, err := decide()
		if err != nil {
			fmt.Println(err)
			return
		}
		for {
			res, err = store.Append(ctx, "account-7", conduit.Exactly(version), events...)
			if !conduit.IsOutcomeUnknown(err) || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond) // then resend the same events
		}
		if conduit.IsRefused(err) && errors.Is(err, conduit.ErrVersionConflict) {
			fmt.Println("refused:", err)
			continue // reload and decide again
		}
		if err != nil {
			fmt.Println(err)
			return
		}
		break
	}
	fmt.Println("appended at version", res.Version, "after", attempts, "decisions")
	// Output:
	// refused: conduit: version conflict on stream "account-7": expected 1, actual 2
	// appended at version 3 after 2 decisions
}

// AppendTx joins the caller's transaction: the events commit with the
// service's own writes, or not at all. After the commit, Notify wakes the
// projectors (InTx does both).
func ExampleStore_AppendTx() {
	store, done, ok := exampleStore(nil)
	if !ok {
		return
	}
	defer done()
	ctx := context.Background()
	pool := store.Pool()
	if _, err := pool.Exec(ctx, `CREATE TABLE payments (order_id text PRIMARY KEY, cents int NOT NULL)`); err != nil {
		fmt.Println(err)
		return
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, `INSERT INTO payments VALUES ('order-1', 4900)`); err != nil {
		fmt.Println(err)
		return
	}
	paid, _ := conduit.NewEvent("order_paid", map[string]int{"amount_cents": 4900})
	res, err := store.AppendTx(ctx, tx, "order-1", conduit.Any, paid)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := tx.Commit(ctx); err != nil {
		fmt.Println(err)
		return
	}
	store.Notify() // wake projectors now rather than at their next poll

	var cents int
	_ = pool.QueryRow(ctx, `SELECT cents FROM payments WHERE order_id = 'order-1'`).Scan(&cents)
	fmt.Println("version:", res.Version, "payment:", cents)
	// Output:
	// version: 1 payment: 4900
}

// InTx runs a function in a transaction, commits it when the function
// returns nil, and then calls Notify; an error rolls everything back.
func ExampleStore_InTx() {
	store, done, ok := exampleStore(nil)
	if !ok {
		return
	}
	defer done()
	ctx := context.Background()

	errOutOfStock := errors.New("out of stock")
	err := store.InTx(ctx, func(tx pgx.Tx) error {
		reserved, _ := conduit.NewEvent("stock_reserved", map[string]int{"quantity": 1})
		if _, err := store.AppendTx(ctx, tx, "order-2", conduit.NoStream, reserved); err != nil {
			return err
		}
		return errOutOfStock // rolls the append back
	})
	fmt.Println(err)
	version, _ := store.StreamVersion(ctx, "order-2")
	fmt.Println("version after the rollback:", version)

	err = store.InTx(ctx, func(tx pgx.Tx) error {
		placed, _ := conduit.NewEvent("order_placed", map[string]string{"customer": "ada"})
		_, err := store.AppendTx(ctx, tx, "order-2", conduit.NoStream, placed)
		return err
	})
	version, _ = store.StreamVersion(ctx, "order-2")
	fmt.Println(err, "version:", version)
	// Output:
	// out of stock
	// version after the rollback: 0
	// <nil> version: 1
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
	for _, err := range store.ReadAll(ctx, last) {
		if err != nil {
			fmt.Println(err)
			return
		}
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

	// UpdateTx decides inside your transaction: a transfer moves money
	// between two accounts atomically.
	err = store.InTx(ctx, func(tx pgx.Tx) error {
		if _, err := accounts.UpdateTx(ctx, store, tx, "account-1", withdraw(2000)); err != nil {
			return err
		}
		_, err := accounts.UpdateTx(ctx, store, tx, "account-2", func(account) ([]conduit.EventData, error) {
			e, err := conduit.NewEvent("deposited", amount{Cents: 2000})
			return []conduit.EventData{e}, err
		})
		return err
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	for _, id := range []string{"account-1", "account-2"} {
		acct, version, err := accounts.Load(ctx, store, id)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(id, "balance", acct.Balance, "at version", version)
	}
	// Output:
	// withdrew 3000, version 2
	// withdraw 9000: insufficient funds
	// account-1 balance 5000 at version 3
	// account-2 balance 2000 at version 1
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
