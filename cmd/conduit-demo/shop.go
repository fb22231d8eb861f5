package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/conduit-es/conduit"
)

// The shop's events. Each order is one stream, "order-<run>-<customer>".
const (
	orderPlaced    = "order_placed"
	itemAdded      = "item_added"
	orderPaid      = "order_paid"
	orderShipped   = "order_shipped"
	orderCancelled = "order_cancelled"
)

type placed struct {
	Customer string `json:"customer"`
}

type item struct {
	Product    string `json:"product"`
	Quantity   int64  `json:"quantity"`
	PriceCents int64  `json:"price_cents"`
}

type paid struct {
	AmountCents int64 `json:"amount_cents"`
}

type shipped struct {
	Carrier string `json:"carrier"`
}

type cancelled struct {
	Reason string `json:"reason"`
}

// readTablesDDL creates the read tables the projection maintains. A user
// program owns its read tables: plain SQL, in its own schema.
const readTablesDDL = `
CREATE SCHEMA IF NOT EXISTS shop;
CREATE TABLE IF NOT EXISTS shop.orders (
    order_id    text PRIMARY KEY,
    customer    text NOT NULL,
    status      text NOT NULL,
    items       bigint NOT NULL DEFAULT 0,
    total_cents bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS shop.order_lines (
    order_id    text NOT NULL REFERENCES shop.orders,
    line        bigint NOT NULL,
    product     text NOT NULL,
    quantity    bigint NOT NULL CHECK (quantity > 0),
    price_cents bigint NOT NULL,
    PRIMARY KEY (order_id, line)
);`

// shopProjection keeps shop.orders and shop.order_lines up to date. It runs
// inside every append's transaction: when Append returns, the tables
// already show the events, and a failing handler rolls the append back.
func shopProjection() *conduit.Router {
	r := conduit.NewRouter("shop", "shop.orders", "shop.order_lines")
	conduit.On(r, orderPlaced, func(ctx context.Context, tx pgx.Tx, e conduit.Event, d placed) error {
		_, err := tx.Exec(ctx, `INSERT INTO shop.orders (order_id, customer, status) VALUES ($1, $2, 'placed')`,
			e.StreamID, d.Customer)
		return err
	})
	conduit.On(r, itemAdded, func(ctx context.Context, tx pgx.Tx, e conduit.Event, d item) error {
		// The stream version numbers the line: replaying the stream gives
		// the same rows.
		if _, err := tx.Exec(ctx, `INSERT INTO shop.order_lines (order_id, line, product, quantity, price_cents)
			VALUES ($1, $2, $3, $4, $5)`, e.StreamID, e.StreamVersion, d.Product, d.Quantity, d.PriceCents); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE shop.orders SET items = items + $2, total_cents = total_cents + $2 * $3
			WHERE order_id = $1`, e.StreamID, d.Quantity, d.PriceCents)
		return err
	})
	conduit.On(r, orderPaid, func(ctx context.Context, tx pgx.Tx, e conduit.Event, _ paid) error {
		return setStatus(ctx, tx, e.StreamID, "paid")
	})
	conduit.On(r, orderShipped, func(ctx context.Context, tx pgx.Tx, e conduit.Event, _ shipped) error {
		return setStatus(ctx, tx, e.StreamID, "shipped")
	})
	conduit.On(r, orderCancelled, func(ctx context.Context, tx pgx.Tx, e conduit.Event, _ cancelled) error {
		return setStatus(ctx, tx, e.StreamID, "cancelled")
	})
	return r
}

func setStatus(ctx context.Context, tx pgx.Tx, orderID, status string) error {
	_, err := tx.Exec(ctx, `UPDATE shop.orders SET status = $2 WHERE order_id = $1`, orderID, status)
	return err
}

// order is the write model: the state an order's events fold into, used to
// decide what may happen next.
type order struct {
	Customer   string
	Status     string // "" (no order), placed, paid, shipped, cancelled
	Items      int64
	TotalCents int64
}

func (o order) evolve(e conduit.Event) (order, error) {
	var err error
	switch e.Type {
	case orderPlaced:
		var d placed
		err = unmarshal(e, &d)
		o.Customer, o.Status = d.Customer, "placed"
	case itemAdded:
		var d item
		err = unmarshal(e, &d)
		o.Items += d.Quantity
		o.TotalCents += d.Quantity * d.PriceCents
	case orderPaid:
		o.Status = "paid"
	case orderShipped:
		o.Status = "shipped"
	case orderCancelled:
		o.Status = "cancelled"
	}
	return o, err
}

var orders = conduit.Entity[order]{Evolve: order.evolve}

var errRefused = errors.New("refused")

// ship decides to ship a paid order.
func ship(carrier string) func(order) ([]conduit.EventData, error) {
	return func(o order) ([]conduit.EventData, error) {
		if o.Status != "paid" {
			return nil, fmt.Errorf("%w: cannot ship an order that is %q", errRefused, o.Status)
		}
		return newEvents(orderShipped, shipped{Carrier: carrier})
	}
}

// cancel decides to cancel an order that is not paid yet.
func cancel(reason string) func(order) ([]conduit.EventData, error) {
	return func(o order) ([]conduit.EventData, error) {
		if o.Status != "placed" {
			return nil, fmt.Errorf("%w: cannot cancel an order that is %q", errRefused, o.Status)
		}
		return newEvents(orderCancelled, cancelled{Reason: reason})
	}
}

func unmarshal(e conduit.Event, v any) error {
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("decode %s: %w", e.Type, err)
	}
	return nil
}
