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
