package conduit_test

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
)

// An asynchronous projector keeps a read table behind the log; WaitFor
// gives read-your-writes.
func ExampleProjector() {
	store, done, ok := exampleStore(nil)
	if !ok {
		return
	}
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := store.Pool()
	if _, err := pool.Exec(ctx, `CREATE TABLE public.order_counts (customer text PRIMARY KEY, orders int NOT NULL)`); err != nil {
		fmt.Println(err)
		return
	}

	type OrderPlaced struct {
		Customer string `json:"customer"`
	}
	counts := conduit.NewRouter("order_counts", "public.order_counts")
	conduit.On(counts, "order_placed", func(ctx context.Context, tx pgx.Tx, e conduit.Event, d OrderPlaced) error {
		_, err := tx.Exec(ctx, `INSERT INTO public.order_counts VALUES ($1, 1)
			ON CONFLICT (customer) DO UPDATE SET orders = order_counts.orders + 1`, d.Customer)
		return err
	})
	projector, err := conduit.NewProjector(store, counts, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	stopped := make(chan error)
	go func() { stopped <- projector.Run(runCtx) }()

	var last conduit.AppendResult
	for i, customer := range []string{"ada", "grace", "ada"} {
		e, _ := conduit.NewEvent("order_placed", OrderPlaced{Customer: customer})
		if last, err = store.Append(ctx, fmt.Sprintf("order-%d", i), conduit.NoStream, e); err != nil {
			fmt.Println(err)
			return
		}
	}
	if err := store.WaitFor(ctx, "order_counts", last.Position); err != nil {
		fmt.Println(err)
		return
	}
	rows, _ := pool.Query(ctx, `SELECT customer, orders FROM public.order_counts ORDER BY customer`)
	for rows.Next() {
		var customer string
		var orders int
		_ = rows.Scan(&customer, &orders)
		fmt.Println(customer, orders)
	}
	status, _ := store.ProjectionStatus(ctx, "order_counts")
	fmt.Println("lag:", status.LagEvents, "applied:", status.EventsApplied)

	stop()
	fmt.Println("run:", <-stopped)
	// Output:
	// ada 2
	// grace 1
	// lag: 0 applied: 3
	// run: <nil>
}

// CatchUp applies everything committed so far and returns: read tables up
// to date in a test or a script, without a goroutine or a sleep.
func ExampleProjector_CatchUp() {
	store, done, ok := exampleStore(nil)
	if !ok {
		return
	}
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := store.Pool()
	if _, err := pool.Exec(ctx, `CREATE TABLE public.order_totals (order_id text PRIMARY KEY, cents bigint NOT NULL)`); err != nil {
		fmt.Println(err)
		return
	}

	type ItemAdded struct {
		Cents int64 `json:"cents"`
	}
	totals := conduit.NewRouter("order_totals", "public.order_totals")
	conduit.On(totals, "item_added", func(ctx context.Context, tx pgx.Tx, e conduit.Event, d ItemAdded) error {
		_, err := tx.Exec(ctx, `INSERT INTO public.order_totals VALUES ($1, $2)
			ON CONFLICT (order_id) DO UPDATE SET cents = order_totals.cents + EXCLUDED.cents`, e.StreamID, d.Cents)
		return err
	})
	projector, err := conduit.NewProjector(store, totals, nil)
	if err != nil {
		fmt.Println(err)
		return
	}

	for _, add := range []struct {
		order string
		cents int64
	}{{"order-1", 450}, {"order-2", 1200}, {"order-1", 300}} {
		e, _ := conduit.NewEvent("item_added", ItemAdded{Cents: add.cents})
		if _, err := store.Append(ctx, add.order, conduit.Any, e); err != nil {
			fmt.Println(err)
			return
		}
	}
	if err := projector.CatchUp(ctx); err != nil {
		fmt.Println(err)
		return
	}
	rows, _ := pool.Query(ctx, `SELECT order_id, cents FROM public.order_totals ORDER BY order_id`)
	for rows.Next() {
		var order string
		var cents int64
		_ = rows.Scan(&order, &cents)
		fmt.Println(order, cents)
	}
	head, _ := store.Head(ctx)
	status, _ := store.ProjectionStatus(ctx, "order_totals")
	fmt.Println("at the head:", status.Checkpoint == head, "state:", status.State)
	// Output:
	// order-1 750
	// order-2 1200
	// at the head: true state: stopped
}

// An OnWrite handler queues its statement instead of running it: a
// projector sends the statements of a batch's events in one round trip.
func ExampleOnWrite() {
	store, done, ok := exampleStore(nil)
	if !ok {
		return
	}
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := store.Pool().Exec(ctx, `CREATE TABLE public.stock (sku text PRIMARY KEY, units int NOT NULL)`); err != nil {
		fmt.Println(err)
		return
	}
	type Received struct {
		SKU   string `json:"sku"`
		Units int    `json:"units"`
	}
	stock := conduit.NewRouter("stock", "public.stock")
	conduit.OnWrite(stock, "received", func(ctx context.Context, e conduit.Event, d Received, b *pgx.Batch) error {
		b.Queue(`INSERT INTO `+conduit.Table(ctx, "public.stock")+` AS s VALUES ($1, $2)
			ON CONFLICT (sku) DO UPDATE SET units = s.units + EXCLUDED.units`, d.SKU, d.Units)
		return nil
	})
	for i, r := range []Received{{"bolt", 100}, {"nut", 40}, {"bolt", 25}} {
		e, _ := conduit.NewEvent("received", r)
		if _, err := store.Append(ctx, fmt.Sprintf("delivery-%d", i), conduit.NoStream, e); err != nil {
			fmt.Println(err)
			return
		}
	}
	projector, err := conduit.NewProjector(store, stock, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := projector.CatchUp(ctx); err != nil { // one batch, one round trip for the three upserts
		fmt.Println(err)
		return
	}
	var bolts int
	if err := store.Pool().QueryRow(ctx, `SELECT units FROM public.stock WHERE sku = 'bolt'`).Scan(&bolts); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("bolts:", bolts)
	// Output: bolts: 125
}

// A projector catching up on a backlog reads the events after its batch
// while the batch applies: on one more connection of the projectors'
// budget, and on two when the budget has room (Config.MaxProjectorConns 3
// or more), the second statement reading the events after the first's.
// The budget is the store's, shared by all its projectors; appends and reads
// keep the rest of the pool.
func ExampleConfig_maxProjectorConns() {
	store, done, ok := exampleStore(&conduit.Config{MaxProjectorConns: 3})
	if !ok {
		return
	}
	defer done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := store.Pool().Exec(ctx, `CREATE TABLE public.visits (page text PRIMARY KEY, n int NOT NULL)`); err != nil {
		fmt.Println(err)
		return
	}
	type Visited struct {
		Page string `json:"page"`
	}
	visits := conduit.NewRouter("visits", "public.visits")
	conduit.OnWrite(visits, "visited", func(ctx context.Context, e conduit.Event, d Visited, b *pgx.Batch) error {
		b.Queue(`INSERT INTO `+conduit.Table(ctx, "public.visits")+` AS v VALUES ($1, 1)
			ON CONFLICT (page) DO UPDATE SET n = v.n + 1`, d.Page)
		return nil
	})
	// A backlog of 30,000 events: three appends of 10,000.
	for s := range 3 {
		events := make([]conduit.EventData, 10_000)
		for i := range events {
			events[i], _ = conduit.NewEvent("visited", Visited{Page: fmt.Sprintf("/page/%d", i%4)})
		}
		if _, err := store.Append(ctx, fmt.Sprintf("session-%d", s), conduit.NoStream, events...); err != nil {
			fmt.Println(err)
			return
		}
	}
	projector, err := conduit.NewProjector(store, visits, &conduit.ProjectorConfig{BatchSize: 1000})
	if err != nil {
		fmt.Println(err)
		return
	}
	if err := projector.CatchUp(ctx); err != nil {
		fmt.Println(err)
		return
	}
	var pages, total int
	if err := store.Pool().QueryRow(ctx, `SELECT count(*), sum(n) FROM public.visits`).Scan(&pages, &total); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("pages:", pages, "visits:", total)
	// Output: pages: 4 visits: 30000
}
