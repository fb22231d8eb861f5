package main

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/conduit-es/conduit"
	"github.com/conduit-es/conduit/internal/pgtest"
)

// scrapeLag reads conduit_projector_lag_events for projection from a
// Prometheus endpoint; ok false when the series is missing.
func scrapeLag(t *testing.T, url, projection string) (float64, bool) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "conduit_projector_lag_events") || !strings.Contains(line, `conduit_projection="`+projection+`"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		return v, true
	}
	return 0, false
}

// waitLag scrapes until the projection's lag satisfies ok.
func waitLag(t *testing.T, url, projection, what string, ok func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		v, found := scrapeLag(t, url, projection)
		if found && ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("lag of %s never %s (last %v, found %v)", projection, what, v, found)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The demo's Prometheus endpoint: the lag metric rises while the projector
// is paused (Store.PauseProjection) and falls back to zero once it is
// resumed.
func TestMetricsEndpointLag(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool := pgtest.NewPool(t, conduit.Migrations(), conduit.Migrate)
	if _, err := pool.Exec(ctx, readTablesDDL+customerActivityDDL); err != nil {
		t.Fatal(err)
	}
	mp, metrics, err := newMetrics()
	if err != nil {
		t.Fatal(err)
	}
	defer mp.Shutdown(context.Background()) //nolint:errcheck
	store, err := conduit.NewStore(pool, &conduit.Config{Projections: []conduit.Projection{shopProjection()}, MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(opsMux(store, metrics))
	defer srv.Close()
	d := &demo{store: store, run: 1}

	runProjector := func() (stop func()) {
		p, err := conduit.NewProjector(store, customerActivity(), &conduit.ProjectorConfig{PollInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- p.Run(rctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("projector: %v", err)
			}
		}
	}
	order := func(customer string) {
		evs, err := newEvents(orderPlaced, placed{Customer: customer})
		if err == nil {
			_, err = store.Append(ctx, d.stream(customer), conduit.NoStream, evs...)
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	stop := runProjector()
	defer stop()
	order("ada")
	waitLag(t, srv.URL+"/metrics", "customer_activity", "0 with the projector running", func(v float64) bool { return v == 0 })
	// Paused (conduit.pause_projection): the projector keeps running and
	// its lease, and applies nothing.
	if err := store.PauseProjection(ctx, "customer_activity"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"grace", "linus", "barbara"} {
		order(c)
	}
	waitLag(t, srv.URL+"/metrics", "customer_activity", "3 while paused", func(v float64) bool { return v == 3 })
	resp, err := http.Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK { // paused for less than a minute: not yet unhealthy
		t.Fatalf("/healthz: %s", resp.Status)
	}
	if err := store.ResumeProjection(ctx, "customer_activity"); err != nil {
		t.Fatal(err)
	}
	waitLag(t, srv.URL+"/metrics", "customer_activity", "0 after resuming", func(v float64) bool { return v == 0 })
}
