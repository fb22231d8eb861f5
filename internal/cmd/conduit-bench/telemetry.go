package main

import (
	"context"
	"fmt"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/conduit-es/conduit"
)

// benchTelemetry: single-event appends on a store with a real OpenTelemetry
// SDK meter provider (a manual reader, collected never: the instruments'
// cost is in recording), and on one that also has a real tracer provider
// sampling every span (no exporter), against a store with neither (the
// API's no-ops), at 1 and 8 writers. Target: metrics cost appends at most
// 3%; traces of every append are reported beside, with a looser target.
func benchTelemetry(ctx context.Context, srv *server) ([]row, error) {
	db, err := srv.freshDB(ctx, "telemetry")
	if err != nil {
		return nil, err
	}
	defer db.drop()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background()) //nolint:errcheck
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	defer tp.Shutdown(context.Background()) //nolint:errcheck
	var rows []row
	for _, writers := range []int{1, 8} {
		pool, err := db.pool(ctx, writers)
		if err != nil {
			return nil, err
		}
		plain, err := conduit.NewStore(pool, nil)
		if err != nil {
			pool.Close()
			return nil, err
		}
		metered, err := conduit.NewStore(pool, &conduit.Config{MeterProvider: mp})
		if err != nil {
			pool.Close()
			return nil, err
		}
		traced, err := conduit.NewStore(pool, &conduit.Config{MeterProvider: mp, TracerProvider: tp})
		if err != nil {
			pool.Close()
			return nil, err
		}
		label := fmt.Sprintf("appends with OpenTelemetry SDK providers, %d writers", writers)
		st, err := compare(ctx, srv.opts, label, writers, srv.opts.duration,
			appendVariant("metrics", 1, appendSingle(metered)),
			appendVariant("metrics+traces", 1, appendSingle(traced)),
			appendVariant("none", 1, appendSingle(plain)))
		pool.Close()
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("%d writers", writers)
		if writers == 1 {
			name = "1 writer"
		}
		const baseline = "the same appends with no MeterProvider or TracerProvider (the API's no-ops)"
		rows = append(rows,
			row{group: "Appends with metrics (OpenTelemetry SDK meter provider)", name: name, baseline: baseline,
				conduit: st[0], raw: st[2], target: 0.97, latency: true},
			row{group: "Appends with metrics and a span each (SDK tracer provider, every span sampled)", name: name, baseline: baseline,
				conduit: st[1], raw: st[2], target: 0.9, latency: true})
	}
	return rows, nil
}
