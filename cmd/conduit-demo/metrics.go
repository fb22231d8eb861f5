package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/conduit-es/conduit"
)

// newMetrics returns an OpenTelemetry meter provider whose metrics a
// Prometheus handler serves: the demo's Config.MeterProvider. Conduit
// itself uses only the OpenTelemetry API; the SDK and the exporter are the
// application's choice (here, the demo's).
func newMetrics() (*sdkmetric.MeterProvider, http.Handler, error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	return mp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}

// opsMux serves /metrics (Prometheus) and /healthz (Store.HealthHandler).
func opsMux(store *conduit.Store, metrics http.Handler) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics)
	mux.Handle("/healthz", store.HealthHandler(nil))
	return mux
}

// serve runs the customer_activity projector and serves /metrics and
// /healthz on addr until ctx ends: scrape it while you append from psql or
// another run, pause the projector (Ctrl-Z on a second instance's
// terminal, or stop this one) and watch conduit_projector_lag_events rise.
func (d *demo) serve(ctx context.Context, addr string, metrics http.Handler) error {
	section("8. Metrics and health: serving until Ctrl-C")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: opsMux(d.store, metrics), ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Printf("  http://%s/metrics (Prometheus) and http://%s/healthz (200 healthy, 503 not)\n", ln.Addr(), ln.Addr())
	projector, err := conduit.NewProjector(d.store, customerActivity(), &conduit.ProjectorConfig{InstanceID: "demo-serve"})
	if err != nil {
		return err
	}
	runErr := projector.Run(ctx)
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(shutdown)
	if serveErr := <-served; !errors.Is(serveErr, http.ErrServerClosed) {
		err = errors.Join(err, serveErr)
	}
	return errors.Join(runErr, err)
}
