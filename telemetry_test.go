package conduit_test

import (
	"context"
	"encoding/json"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/conduit-es/conduit"
)

// collect reads every metric from reader, by name.
func collectMetrics(t testing.TB, reader *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

func hasAttr(set attribute.Set, key, value string) bool {
	v, ok := set.Value(attribute.Key(key))
	return ok && v.AsString() == value
}

// The instruments of README's table report what happened, through a real
// SDK meter provider.
func TestMetrics(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background()) //nolint:errcheck
	store, pool := newStore(t, &conduit.Config{MeterProvider: mp})
	createLedger(t, pool)

	appendN(t, store, "a", 3)
	if _, err := store.Append(ctx, "a", conduit.Exactly(0), mustEvent(t, "e", 1)); !conduit.IsRefused(err) {
		t.Fatalf("append at a wrong version: %v", err)
	}
	if err := newProjector(t, store, &ledger{name: "ledger"}, nil).CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	appendN(t, store, "a", 2) // lag 2: nobody runs the projector now
	if err := store.Enqueue(ctx, conduit.NewMessage("t", "k", []byte("x"))); err != nil {
		t.Fatal(err)
	}

	m := collectMetrics(t, reader)
	dur, ok := m["conduit.append.duration"].Data.(metricdata.Histogram[float64])
	if !ok || m["conduit.append.duration"].Unit != "s" {
		t.Fatalf("conduit.append.duration: %+v", m["conduit.append.duration"])
	}
	outcomes := map[string]uint64{}
	for _, p := range dur.DataPoints {
		v, _ := p.Attributes.Value("conduit.outcome")
		outcomes[v.AsString()] += p.Count
	}
	if outcomes["ok"] != 5 || outcomes["refused.version_conflict"] != 1 {
		t.Fatalf("append outcomes %v; want 5 ok, 1 version conflict", outcomes)
	}
	if sum := m["conduit.append.events"].Data.(metricdata.Sum[int64]); len(sum.DataPoints) != 1 || sum.DataPoints[0].Value != 5 {
		t.Fatalf("conduit.append.events: %+v", sum)
	}
	batches := m["conduit.projector.batch.events"].Data.(metricdata.Histogram[int64])
	if len(batches.DataPoints) != 1 || batches.DataPoints[0].Sum != 3 || !hasAttr(batches.DataPoints[0].Attributes, "conduit.projection", "ledger") {
		t.Fatalf("conduit.projector.batch.events: %+v", batches)
	}
	changes := map[string]int64{}
	for _, p := range m["conduit.lease.changes"].Data.(metricdata.Sum[int64]).DataPoints {
		v, _ := p.Attributes.Value("conduit.lease.change")
		changes[v.AsString()] += p.Value
	}
	if changes["acquired"] != 1 || changes["released"] != 1 {
		t.Fatalf("lease changes %v; want one acquired, one released", changes)
	}
	lag := m["conduit.projector.lag.events"].Data.(metricdata.Gauge[int64])
	if len(lag.DataPoints) != 1 || lag.DataPoints[0].Value != 2 {
		t.Fatalf("conduit.projector.lag.events: %+v; want 2", lag)
	}
	if age := m["conduit.projector.lag.duration"].Data.(metricdata.Gauge[float64]); len(age.DataPoints) != 1 || age.DataPoints[0].Value <= 0 {
		t.Fatalf("conduit.projector.lag.duration: %+v", age)
	}
	if p := m["conduit.outbox.pending"].Data.(metricdata.Gauge[int64]); len(p.DataPoints) != 1 || p.DataPoints[0].Value != 1 {
		t.Fatalf("conduit.outbox.pending: %+v", p)
	}
	if _, ok := m["conduit.horizon.duration"].Data.(metricdata.Gauge[float64]); !ok {
		t.Fatalf("conduit.horizon.duration missing: %v", m["conduit.horizon.duration"])
	}
}

// An append's trace context is stored in its events' metadata, and the
// projector's batch span links back to it; the relay's publish span links
// to the context its message was enqueued under.
func TestTraceLinks(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background()) //nolint:errcheck
	store, pool := newStore(t, &conduit.Config{TracerProvider: tp})
	createLedger(t, pool)

	reqCtx, req := tp.Tracer("test").Start(ctx, "request")
	if _, err := store.Append(reqCtx, "a", conduit.Any, mustEvent(t, "e", 1), conduit.EventData{Type: "e", Data: []byte(`1`), Metadata: []byte(`{"user":"ada"}`)}); err != nil {
		t.Fatal(err)
	}
	if err := store.Enqueue(reqCtx, conduit.NewMessage("t", "k", []byte("x"))); err != nil {
		t.Fatal(err)
	}
	req.End()
	events := collect(t, store.ReadStream(ctx, "a", 0))
	var md map[string]string
	if err := json.Unmarshal(events[1].Metadata, &md); err != nil || md["user"] != "ada" || md[conduit.TraceparentKey] == "" {
		t.Fatalf("metadata %s: %v; want the user's key and the traceparent", events[1].Metadata, err)
	}
	if err := newProjector(t, store, &ledger{name: "ledger"}, nil).CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	drain(t, ctx, newRelay(t, store, &recorder{}, nil))

	want := req.SpanContext().TraceID()
	linked := map[string]bool{}
	names := map[string]bool{}
	for _, s := range rec.Ended() {
		names[s.Name()] = true
		for _, l := range s.Links() {
			if l.SpanContext.TraceID() == want {
				linked[s.Name()] = true
			}
		}
		if s.Name() == "conduit.append" && s.Parent().TraceID() != want {
			t.Errorf("append span not a child of the request: %v", s.Parent())
		}
	}
	if !names["conduit.append"] || !linked["conduit.projector.batch"] || !linked["conduit.relay.publish"] {
		t.Fatalf("spans %v, linked to the request %v; want the batch and the publish linked", names, linked)
	}
}

func TestWithTraceparent(t *testing.T) {
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	for in, want := range map[string]string{
		``:                    `{"traceparent":"` + tp + `"}`,
		`{}`:                  `{"traceparent":"` + tp + `"}`,
		` { } `:               `{"traceparent":"` + tp + `"} `,
		`{"a":1}`:             `{"traceparent":"` + tp + `","a":1}`,
		` {"a": {"b": []}} `:  `{"traceparent":"` + tp + `","a": {"b": []}} `,
		`{"traceparent":"x"}`: `{"traceparent":"x"}`,
		`[1,2]`:               `[1,2]`,
		`"text"`:              `"text"`,
		`null`:                `null`,
	} {
		got := string(conduit.WithTraceparent([]byte(in), tp))
		if got != want {
			t.Errorf("withTraceparent(%q) = %q, want %q", in, got, want)
		}
		if in != "" && in != "null" && !json.Valid([]byte(got)) {
			t.Errorf("withTraceparent(%q) = %q: not valid JSON", in, got)
		}
	}
}
