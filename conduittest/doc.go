// Package conduittest gives your tests a real PostgreSQL database with
// Conduit's schema, a fresh one per test, so code that appends, reads,
// projects and runs projectors is tested against what it will meet in
// production instead of a fake.
//
//	func TestPlaceOrder(t *testing.T) {
//		t.Parallel()
//		store := conduittest.NewStore(t, nil)
//		placed, _ := conduit.NewEvent("order_placed", map[string]string{"customer": "ada"})
//		if _, err := store.Append(t.Context(), "order-1", conduit.NoStream, placed); err != nil {
//			t.Fatal(err)
//		}
//		...
//	}
//
// [NewStore] returns a [conduit.Store] (its pool is [conduit.Store.Pool]),
// [NewPool] a pool, and [NewDatabase] a connection string for building
// your own pool. Everything is released when the test ends: the store
// closed, the pool closed, the database dropped.
//
// # One database per test
//
// Each call creates its own database, so tests can run with t.Parallel()
// and still commit, LISTEN and compete for projector leases without
// seeing each other's events, notifications or locks. Creating one is
// cheap: it is a copy (CREATE DATABASE ... TEMPLATE) of a template
// database migrated once with [conduit.Migrate]. Templates are named
// conduit_tmpl_ and a fingerprint of [conduit.Migrations] (and of
// [Template.Key]); they are kept on the server for the next run and for
// other test processes, and a new one is built when the migrations change.
// Old templates stay behind until you drop them; a run rebuilds whatever
// it misses. Test databases are named conduit_test_ and a random suffix.
//
// One thing is shared by the whole server: [conduit.Store.ReadAll] and
// projectors read only below the oldest transaction still running
// anywhere on it, so other tests' transactions (including the CREATE
// DATABASE of a test starting) can delay them briefly. Wait for what you
// expect ([conduit.Store.WaitFor] for a projector, or polling with a
// deadline), never for a fixed time.
//
// # Your own schema
//
// A [Template] with a Setup adds your schema (read tables, reference
// rows) on top of Conduit's: Setup runs once, on the template, and every
// test gets a copy. Its Key names what Setup does, so that a change to
// your schema makes a new template; the SQL text Setup runs is a good Key:
//
//	const shopSchema = `CREATE SCHEMA shop; CREATE TABLE shop.orders (...);`
//
//	var shop = conduittest.Template{
//		Key: shopSchema,
//		Setup: func(ctx context.Context, pool *pgxpool.Pool) error {
//			_, err := pool.Exec(ctx, shopSchema)
//			return err
//		},
//	}
//
//	func TestOrders(t *testing.T) {
//		store := shop.NewStore(t, &conduit.Config{Projections: ...})
//		...
//	}
//
// # Where the server comes from
//
// In this order:
//
//  1. DATABASE_URL, a URL or keyword/value connection string naming any
//     database on the server: the tests create their own databases there
//     and never write to the one named.
//  2. A local server at the libpq defaults: the PGHOST, PGPORT, PGUSER, ...
//     environment variables, else the default unix socket directory
//     (/var/run/postgresql, /private/tmp or /tmp) and the OS user name;
//     then, only when none of PGHOST, PGPORT, PGUSER and PGSERVICE is
//     set, 127.0.0.1:5432 as user postgres. A server counts only if it
//     answers within two seconds and its role may create databases
//     (CREATEDB or superuser).
//  3. Where a Docker engine answers, a PostgreSQL container started with
//     testcontainers-go, removed when the test binary exits.
//
// Without any, tests that ask for a database are skipped, except when the
// environment has CI=true, where they fail: CI must never count a test
// that did not run. The first test to get a server logs which one it is
// (go test -v shows it). PostgreSQL 13 or later; the role needs CREATEDB
// (or superuser) with DATABASE_URL too.
package conduittest
