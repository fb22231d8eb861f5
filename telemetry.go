package conduit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// instrumentationName names Conduit's meter and tracer.
const instrumentationName = "github.com/conduit-es/conduit"

// Attribute keys of Conduit's metrics and spans.
const (
	attrOutcome    = attribute.Key("conduit.outcome")
	attrProjection = attribute.Key("conduit.projection")
	attrWorker     = attribute.Key("conduit.worker")
	attrChange     = attribute.Key("conduit.lease.change")
	attrStream     = attribute.Key("conduit.stream")
	attrEvents     = attribute.Key("conduit.events")
	attrMessages   = attribute.Key("conduit.messages")
)

// TraceparentKey is the key of the W3C trace context Append stores in an
// event's metadata (and Enqueue in a message's headers) when its context
// carries a sampled or recording span: the projector's and the relay's spans
// link back to it.
const TraceparentKey = "traceparent"

// telemetry holds a Store's instruments (see the table in README's
// "Observability"). With no MeterProvider and TracerProvider they are
// no-ops that cost a method call.
type telemetry struct {
	tracer      trace.Tracer
	propagator  propagation.TraceContext
	appendDur   metric.Float64Histogram
	appendEvts  metric.Int64Counter
	batchEvents metric.Int64Histogram
	batchDur    metric.Float64Histogram
	failures    metric.Int64Counter
	parked      metric.Int64Counter
	leases      metric.Int64Counter
	delivered   metric.Int64Counter
	deadLetters metric.Int64Counter
}

func newTelemetry(mp metric.MeterProvider, tp trace.TracerProvider) (*telemetry, error) {
	if mp == nil {
		mp = metricnoop.NewMeterProvider()
	}
	if tp == nil {
		tp = tracenoop.NewTracerProvider()
	}
	m := mp.Meter(instrumentationName)
	t := &telemetry{tracer: tp.Tracer(instrumentationName)}
	var err error
	set := func(e error) {
		if err == nil {
			err = e
		}
	}
	var e error
	t.appendDur, e = m.Float64Histogram("conduit.append.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of appends, by outcome."),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
	set(e)
	t.appendEvts, e = m.Int64Counter("conduit.append.events", metric.WithUnit("{event}"),
		metric.WithDescription("Events stored by appends."))
	set(e)
	t.batchEvents, e = m.Int64Histogram("conduit.projector.batch.events", metric.WithUnit("{event}"),
		metric.WithDescription("Events a projector batch passed."),
		metric.WithExplicitBucketBoundaries(1, 10, 100, 1000, 10000))
	set(e)
	t.batchDur, e = m.Float64Histogram("conduit.projector.batch.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of projector batches (read, apply, checkpoint)."),
		metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
	set(e)
	t.failures, e = m.Int64Counter("conduit.projector.failures", metric.WithUnit("{attempt}"),
		metric.WithDescription("Failed attempts of a projection at an event (each is retried, then the poison policy applies)."))
	set(e)
	t.parked, e = m.Int64Counter("conduit.projector.parked", metric.WithUnit("{event}"),
		metric.WithDescription("Events parked under PoisonPark."))
	set(e)
	t.leases, e = m.Int64Counter("conduit.lease.changes", metric.WithUnit("{change}"),
		metric.WithDescription("Leases acquired, lost and released, by projectors and the relay."))
	set(e)
	t.delivered, e = m.Int64Counter("conduit.outbox.delivered", metric.WithUnit("{message}"),
		metric.WithDescription("Outbox messages the publisher acknowledged."))
	set(e)
	t.deadLetters, e = m.Int64Counter("conduit.outbox.dead_lettered", metric.WithUnit("{message}"),
		metric.WithDescription("Outbox messages that became dead letters."))
	set(e)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// registerGauges registers the gauges read from the database at each
// collection: projector lag, outbox pending and age, safe-horizon age.
// A failed read is logged and skipped.
func (s *Store) registerGauges(mp metric.MeterProvider) error {
	if mp == nil {
		return nil
	}
	m := mp.Meter(instrumentationName)
	lagEvents, err := m.Int64ObservableGauge("conduit.projector.lag.events", metric.WithUnit("{event}"),
		metric.WithDescription("Events after a projection's checkpoint."))
	if err != nil {
		return err
	}
	lagAge, err := m.Float64ObservableGauge("conduit.projector.lag.duration", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest event after a projection's checkpoint (0 when caught up)."))
	if err != nil {
		return err
	}
	pending, err := m.Int64ObservableGauge("conduit.outbox.pending", metric.WithUnit("{message}"),
		metric.WithDescription("Outbox messages the relay has not passed."))
	if err != nil {
		return err
	}
	oldest, err := m.Float64ObservableGauge("conduit.outbox.oldest_pending.duration", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest pending outbox message (0 when none)."))
	if err != nil {
		return err
	}
	dead, err := m.Int64ObservableGauge("conduit.outbox.dead_letters", metric.WithUnit("{message}"),
		metric.WithDescription("Dead letters waiting for a retry or a discard."))
	if err != nil {
		return err
	}
	horizon, err := m.Float64ObservableGauge("conduit.horizon.duration", metric.WithUnit("s"),
		metric.WithDescription("How long the oldest running write transaction has held back the safe horizon that projectors, the relay and ReadAll read below."))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if sts, err := s.ProjectionStatuses(ctx); err == nil {
			for _, st := range sts {
				attrs := metric.WithAttributes(attrProjection.String(st.Name))
				o.ObserveInt64(lagEvents, st.LagEvents, attrs)
				o.ObserveFloat64(lagAge, st.Lag.Seconds(), attrs)
			}
		} else {
			s.cfg.Logger.Warn("conduit: metrics: projection status", slog.Any("error", err))
		}
		if st, err := s.OutboxStatus(ctx); err == nil {
			o.ObserveInt64(pending, st.Pending)
			o.ObserveFloat64(oldest, st.OldestPendingAge.Seconds())
			o.ObserveInt64(dead, st.DeadLetters)
		} else {
			s.cfg.Logger.Warn("conduit: metrics: outbox status", slog.Any("error", err))
		}
		if age, err := s.queries.HorizonAge(ctx); err == nil {
			o.ObserveFloat64(horizon, age)
		} else {
			s.cfg.Logger.Warn("conduit: metrics: horizon age", slog.Any("error", err))
		}
		return nil
	}, lagEvents, lagAge, pending, oldest, dead, horizon)
	return err
}

// appendOutcome names an append's outcome for the metrics.
func appendOutcome(res AppendResult, err error) string {
	switch {
	case err == nil && res.Duplicate:
		return "duplicate"
	case err == nil:
		return "ok"
	case IsRefused(err):
		return "refused." + refusalReason(err)
	case IsOutcomeUnknown(err):
		return "outcome_unknown"
	}
	return "error"
}

// refusalReason names a refusal for the metrics.
func refusalReason(err error) string {
	switch {
	case errors.Is(err, ErrVersionConflict):
		return "version_conflict"
	case errors.Is(err, ErrTransactionOrder):
		return "transaction_order"
	case errors.Is(err, ErrDuplicateEventID):
		return "duplicate_event_id"
	case errors.Is(err, ErrAppendTooLarge), errors.Is(err, ErrEventTooLarge):
		return "too_large"
	}
	return "invalid"
}

// outcomeOptions are the attribute sets of the append outcomes, made once:
// a measurement then allocates none.
var outcomeOptions = func() map[string]metric.MeasurementOption {
	m := map[string]metric.MeasurementOption{}
	for _, o := range []string{"ok", "duplicate", "outcome_unknown", "error", "refused.version_conflict",
		"refused.transaction_order", "refused.duplicate_event_id", "refused.too_large", "refused.invalid"} {
		m[o] = metric.WithAttributeSet(attribute.NewSet(attrOutcome.String(o)))
	}
	return m
}()

func outcomeOption(outcome string) metric.MeasurementOption {
	if o, ok := outcomeOptions[outcome]; ok {
		return o
	}
	return metric.WithAttributes(attrOutcome.String(outcome))
}

// startAppend starts an append's span; end records it and its metrics.
func (t *telemetry) startAppend(ctx context.Context, streamID string, n int) (context.Context, func(AppendResult, error)) {
	start := time.Now()
	ctx, span := t.tracer.Start(ctx, "conduit.append", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attrStream.String(streamID), attrEvents.Int(n)))
	return ctx, func(res AppendResult, err error) {
		outcome := appendOutcome(res, err)
		t.appendDur.Record(ctx, time.Since(start).Seconds(), outcomeOption(outcome))
		if err == nil && !res.Duplicate {
			t.appendEvts.Add(ctx, int64(n))
		}
		if span.IsRecording() {
			span.SetAttributes(attrOutcome.String(outcome))
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, outcome)
			}
		}
		span.End()
	}
}

// traceparent returns ctx's span context as a W3C traceparent, "" when
// it has no valid one.
func (t *telemetry) traceparent(ctx context.Context) string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ""
	}
	carrier := propagation.MapCarrier{}
	t.propagator.Inject(ctx, carrier)
	return carrier[TraceparentKey]
}

// withTraceparent adds tp to metadata (a JSON object, or empty) under
// TraceparentKey, unless it is there already or metadata is not an object.
// metadata is valid JSON (checked before): the key is spliced in after the
// opening brace, with no decoding.
func withTraceparent(metadata []byte, tp string) []byte {
	if tp == "" {
		return metadata
	}
	field := `"` + TraceparentKey + `":"` + tp + `"`
	trimmed := bytes.TrimLeft(metadata, " \t\r\n")
	switch {
	case len(trimmed) == 0:
		return []byte("{" + field + "}")
	case trimmed[0] != '{' || bytes.Contains(trimmed, []byte(`"`+TraceparentKey+`"`)):
		return metadata // not an object, or it has the key (or a value that looks like it)
	}
	rest := bytes.TrimLeft(trimmed[1:], " \t\r\n")
	out := make([]byte, 0, len(trimmed)+len(field)+2)
	out = append(out, '{')
	out = append(out, field...)
	if len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}

// links returns span links to the trace contexts stored in events'
// metadata (at most 128).
func (t *telemetry) eventLinks(events []Event) []trace.Link {
	var links []trace.Link
	for _, e := range events {
		if len(links) == 128 {
			break
		}
		if len(e.Metadata) == 0 {
			continue
		}
		var md map[string]json.RawMessage
		if json.Unmarshal(e.Metadata, &md) != nil {
			continue
		}
		var tp string
		if raw, ok := md[TraceparentKey]; !ok || json.Unmarshal(raw, &tp) != nil {
			continue
		}
		if sc := t.spanContext(tp); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	return links
}

// messageLinks returns span links to the trace contexts in messages'
// headers (at most 128).
func (t *telemetry) messageLinks(msgs []Message) []trace.Link {
	var links []trace.Link
	for _, m := range msgs {
		if len(links) == 128 {
			break
		}
		if sc := t.spanContext(m.Headers[TraceparentKey]); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	return links
}

func (t *telemetry) spanContext(tp string) trace.SpanContext {
	if tp == "" {
		return trace.SpanContext{}
	}
	ctx := t.propagator.Extract(context.Background(), propagation.MapCarrier{TraceparentKey: tp})
	return trace.SpanContextFromContext(ctx)
}

// batchDone records a projector batch that read passed events.
func (t *telemetry) batchDone(ctx context.Context, projection string, passed int, d time.Duration) {
	attrs := metric.WithAttributes(attrProjection.String(projection))
	t.batchEvents.Record(ctx, int64(passed), attrs)
	t.batchDur.Record(ctx, d.Seconds(), attrs)
}

// endSpan ends span with err's status.
func endSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// leaseChange counts a lease change of a worker (projection name, or
// "outbox" for the relay).
func (t *telemetry) leaseChange(worker, name, change string) {
	t.leases.Add(context.Background(), 1, metric.WithAttributes(
		attrWorker.String(worker), attrProjection.String(name), attrChange.String(change)))
}

// minLevel is a slog handler that drops records below level.
type minLevel struct {
	slog.Handler
	level slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(attrs), h.level}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.Handler.WithGroup(name), h.level}
}
