package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
)

// customerActivityDDL is the read table of the asynchronous projection.
const customerActivityDDL = `
CREATE TABLE IF NOT EXISTS shop.customer_activity (
    customer     text PRIMARY KEY,
    orders       bigint NOT NULL DEFAULT 0,
    items        bigint NOT NULL DEFAULT 0,
    last_order   text NOT NULL DEFAULT ''
);`

// customerActivity is an asynchronous projection: a Projector applies it
// behind the log, in batches, each committed with its checkpoint.
func customerActivity() *conduit.Router {
	r := conduit.NewRouter("customer_activity", "shop.customer_activity")
	conduit.On(r, orderPlaced, func(ctx context.Context, tx pgx.Tx, e conduit.Event, d placed) error {
		_, err := tx.Exec(ctx, `INSERT INTO shop.customer_activity (customer, orders, last_order) VALUES ($1, 1, $2)
			ON CONFLICT (customer) DO UPDATE SET orders = customer_activity.orders + 1, last_order = $2`,
			d.Customer, e.StreamID)
		return err
	})
	conduit.On(r, itemAdded, func(ctx context.Context, tx pgx.Tx, e conduit.Event, d item) error {
		_, err := tx.Exec(ctx, `UPDATE shop.customer_activity SET items = items + $2
			WHERE customer = (SELECT customer FROM shop.orders WHERE order_id = $1)`, e.StreamID, d.Quantity)
		return err
	})
	return r
}

// asyncProjector runs the customer_activity projector while the step
// appends one more order, waits until the projector has passed it, and shows
// the projection's status as SQL reports it.
func (d *demo) asyncProjector(ctx context.Context) (err error) {
	section("6. An asynchronous projector follows the global log")
	if _, err := d.store.Pool().Exec(ctx, customerActivityDDL); err != nil {
		return fmt.Errorf("create customer_activity: %w", err)
	}
	projector, err := conduit.NewProjector(d.store, customerActivity(), &conduit.ProjectorConfig{InstanceID: "demo"})
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- projector.Run(runCtx) }()
	defer func() {
		stop()
		if runErr := <-stopped; runErr != nil {
			err = errors.Join(err, fmt.Errorf("projector: %w", runErr))
		}
	}()

	evs, err := newEvents(orderPlaced, placed{Customer: "ada"})
	if err == nil {
		evs, err = appendEvent(evs, itemAdded, item{Product: "notebook", Quantity: 3, PriceCents: 450})
	}
	if err != nil {
		return err
	}
	res, err := d.store.Append(ctx, d.stream("ada-2"), conduit.NoStream, evs...)
	if err != nil {
		return err
	}
	fmt.Printf("  Appended order %s at position %s; the projector applies it behind the log.\n", d.stream("ada-2"), res.Position)
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := d.store.WaitFor(waitCtx, "customer_activity", res.Position); err != nil {
		return err
	}
	fmt.Printf("  WaitFor: the projector passed it (read your own writes); waited %s\n", time.Since(start).Round(time.Millisecond))

	var orders, units int64
	if err := d.store.Pool().QueryRow(ctx, `SELECT orders, items FROM shop.customer_activity WHERE customer = 'ada'`).Scan(&orders, &units); err != nil {
		return err
	}
	fmt.Printf("  shop.customer_activity: ada has placed %d orders, %s (all runs)\n", orders, items(units))

	var state string
	var lag, applied int64
	if err := d.store.Pool().QueryRow(ctx, `SELECT state, lag_events, events_applied
		FROM conduit.projection_status() WHERE name = 'customer_activity'`).Scan(&state, &lag, &applied); err != nil {
		return err
	}
	fmt.Printf("  SELECT * FROM conduit.projection_status(): state %s, lag %d events, %d events applied\n", state, lag, applied)
	fmt.Println("  Rebuild it any time from psql: SELECT conduit.rebuild_projection('customer_activity');")
	return nil
}
