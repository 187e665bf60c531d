package execute

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

// The submission metrics (README "Metrics"): rex.deliberations.submitted by kind and
// outcome (accepted, duplicate, invalid, conflict, unavailable, error) and
// rex.submit.duration, the time execute took to accept or refuse one.
var (
	submitted      metric.Int64Counter
	submitDuration metric.Float64Histogram
)

func init() {
	m := otel.Meter("github.com/fleet-ai/ray-executor/functions/execute")
	var err error
	if submitted, err = m.Int64Counter("rex.deliberations.submitted",
		metric.WithDescription("deliberations submitted to execute, by kind and outcome")); err != nil {
		otel.Handle(err)
	}
	if submitDuration, err = m.Float64Histogram("rex.submit.duration", metric.WithUnit("s"),
		metric.WithDescription("time execute took to accept or refuse a submission"),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)); err != nil {
		otel.Handle(err)
	}
}

// observeSubmit records one submission and puts its outcome on the request's span.
func observeSubmit(ctx context.Context, kind domain.Kind, start time.Time, sub Submission, err error) {
	outcome := "accepted"
	switch {
	case err == nil && sub.Duplicate:
		outcome = "duplicate"
	case err == nil:
	case errors.Is(err, domain.ErrInvalid):
		outcome = "invalid"
	case errors.Is(err, domain.ErrConflict):
		outcome = "conflict"
	case errors.Is(err, domain.ErrUnavailable), errors.Is(err, domain.ErrDeadline):
		outcome = "unavailable"
	default:
		outcome = "error"
	}
	attrs := metric.WithAttributes(attribute.String("kind", string(kind)), attribute.String("outcome", outcome))
	submitted.Add(ctx, 1, attrs)
	submitDuration.Record(ctx, time.Since(start).Seconds(), attrs)
	span := []attribute.KeyValue{attribute.String("deliberation.kind", string(kind)), attribute.String("outcome", outcome)}
	if sub.DeliberationID != "" {
		span = append(span, attribute.String("deliberation.id", sub.DeliberationID))
	}
	telemetry.Annotate(ctx, span...)
}
