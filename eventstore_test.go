package conduit_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/conduit-es/conduit"
)

func TestAppendAndRead(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	store, pool := newStore(t, nil)

	res, err := store.Append(ctx, "order-1", conduit.NoStream,
		mustEvent(t, "order_placed", map[string]any{"total": 10}),
		mustEvent(t, "order_paid", map[string]any{"amount": 10}))
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	if res.Version != 2 || res.Duplicate || res.Position.IsZero() {
		t.Fatalf("result = %+v", res)
	}
	events := collect(t, store.ReadStream(ctx, "order-1", 1))
	if len(events) != 2 || events[0].Type != "order_placed" || events[1].StreamVersion != 2 {
		t.Fatalf("events = %+v", events)
	}
	if events[1].Position != res.Position {
		t.Fatalf("position %v, append said %v", events[1].Position, res.Position)
	}
	// Transactions of tests running in parallel hold ReadAll's horizon back.
	waitSettled(t, ctx, pool)
	all := collect(t, store.ReadAll(ctx, conduit.Position{}))
	if len(all) != 2 || all[0].ID != events[0].ID {
		t.Fatalf("all = %+v", all)
	}
	_, err = store.Append(ctx, "order-1", conduit.Exactly(1), mustEvent(t, "x", 1))
	var vc *conduit.VersionConflictError
	if !errors.As(err, &vc) || !errors.Is(err, conduit.ErrVersionConflict) || vc.Actual != 2 {
		t.Fatalf("err = %v", err)
	}
}

// namedProjection is a projection that does nothing but fail on demand.
type namedProjection struct {
	name string
	err  error
}

func (p namedProjection) Name() string { return p.name }

func (p namedProjection) Apply(context.Context, pgx.Tx, conduit.Event) error { return p.err }

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	// No database access in the constructor: a pool on a closed port will do.
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := conduit.NewStore(pool, nil); err != nil {
		t.Fatalf("NewStore with a nil config: %v", err)
	}
	if _, err := conduit.NewStore(pool, &conduit.Config{}); err != nil {
		t.Fatalf("NewStore with a zero config: %v", err)
	}
	if _, err := conduit.NewStore(nil, nil); err == nil {
		t.Fatal("NewStore(nil pool) succeeded")
	}

	p := namedProjection{name: "p"}
	for _, c := range []struct {
		name  string
		cfg   conduit.Config
		field string
	}{
		{"negative MaxEventSize", conduit.Config{MaxEventSize: -1}, "MaxEventSize"},
		{"negative ReadPageSize", conduit.Config{ReadPageSize: -1}, "ReadPageSize"},
		{"nil projection", conduit.Config{Projections: []conduit.Projection{p, nil}}, "Projections[1]"},
		{"duplicate projection names", conduit.Config{Projections: []conduit.Projection{p, namedProjection{name: "q"}, p}}, "Projections[2]"},
		{"empty projection name", conduit.Config{Projections: []conduit.Projection{namedProjection{}}}, "Projections[0]"},
	} {
		_, err := conduit.NewStore(pool, &c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: err = %v, want it to name %s", c.name, err, c.field)
		}
	}
}

// The store keeps its own copy of the configuration's projections.
func TestConfigProjectionsCopied(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	pool := newPool(t)
	cfg := &conduit.Config{Projections: []conduit.Projection{namedProjection{name: "p"}}}
	store, err := conduit.NewStore(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Projections[0] = namedProjection{name: "p", err: errors.New("changed after NewStore")}
	if _, err := store.Append(ctx, "s", conduit.NoStream, mustEvent(t, "e", 1)); err != nil {
		t.Fatalf("the store uses the caller's slice: %v", err)
	}
}

// Every numeric Config field has a range; a value outside it is a
// *ConfigError naming the field, never a silent clamp or wrap-around.
func TestConfigRanges(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	for _, c := range []struct {
		cfg   conduit.Config
		field string
	}{
		{conduit.Config{MaxEventSize: -1}, "Config.MaxEventSize"},
		{conduit.Config{MaxEventSize: conduit.MaxEventSizeLimit + 1}, "Config.MaxEventSize"},
		{conduit.Config{MaxEventSize: 1 << 40}, "Config.MaxEventSize"},
		{conduit.Config{MaxAppendSize: -5}, "Config.MaxAppendSize"},
		{conduit.Config{MaxAppendSize: conduit.MaxAppendSizeLimit + 1}, "Config.MaxAppendSize"},
		{conduit.Config{MaxEventSize: 2 << 20, MaxAppendSize: 1 << 20}, "Config.MaxAppendSize"},
		{conduit.Config{ReadPageSize: -1}, "Config.ReadPageSize"},
		{conduit.Config{ReadPageSize: 1 << 32}, "Config.ReadPageSize"},
		{conduit.Config{ReadPageSize: 1 << 31}, "Config.ReadPageSize"},
		{conduit.Config{NotifyInterval: -time.Millisecond}, "Config.NotifyInterval"},
		{conduit.Config{NotifyInterval: time.Hour}, "Config.NotifyInterval"},
		{conduit.Config{MaxAppendBatch: -1}, "Config.MaxAppendBatch"},
		{conduit.Config{MaxAppendBatch: conduit.MaxAppendBatchLimit + 1}, "Config.MaxAppendBatch"},
		{conduit.Config{Projections: []conduit.Projection{nil}}, "Config.Projections[0]"},
	} {
		_, err := conduit.NewStore(pool, &c.cfg)
		var ce *conduit.ConfigError
		if !errors.As(err, &ce) || !errors.Is(err, conduit.ErrInvalidConfig) || ce.Field != c.field {
			t.Errorf("%+v: err = %v, want a *ConfigError naming %s", c.cfg, err, c.field)
		}
	}
	for _, cfg := range []conduit.Config{
		{},
		{MaxEventSize: conduit.MaxEventSizeLimit},
		{MaxEventSize: 32 << 20}, // MaxAppendSize follows it up
		{MaxAppendBatch: 1},
		{MaxAppendBatch: conduit.MaxAppendBatchLimit, DisableAppendBatching: true},
		{MaxAppendSize: conduit.MaxAppendSizeLimit, ReadPageSize: conduit.ReadPageSizeLimit, NotifyInterval: conduit.NotifyIntervalLimit},
	} {
		if _, err := conduit.NewStore(pool, &cfg); err != nil {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
}
