package ray

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// The Ray REST client's metrics (README "Metrics"): every call's duration, retries
// included, by call and outcome, and the circuit breaker's state. Labels are bounded: the
// call is named from its method and path pattern, never from an id.
var (
	meter        = otel.Meter("github.com/fleet-ai/ray-executor/shared/ray")
	callDuration metric.Float64Histogram
)

func init() {
	var err error
	callDuration, err = meter.Float64Histogram("rex.ray.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Ray Jobs REST calls: duration (retries included) by call and outcome"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
	if err != nil {
		otel.Handle(err)
	}
}

// observe records one call.
func observe(ctx context.Context, r request, start time.Time, err error) {
	callDuration.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(
		attribute.String("call", callName(r)), attribute.String("outcome", outcomeOf(err))))
}

// callName names a call by its method and path pattern.
func callName(r request) string {
	p := r.path
	switch {
	case p == "/api/version":
		return "version"
	case p == "/api/jobs/" && r.method == http.MethodPost:
		return "submit_job"
	case p == "/api/jobs/":
		return "list_jobs"
	case strings.HasPrefix(p, "/api/jobs/") && strings.HasSuffix(p, "/stop"):
		return "stop_job"
	case strings.HasPrefix(p, "/api/jobs/") && strings.HasSuffix(p, "/logs"):
		return "job_logs"
	case strings.HasPrefix(p, "/api/jobs/") && r.method == http.MethodDelete:
		return "delete_job"
	case strings.HasPrefix(p, "/api/jobs/"):
		return "get_job"
	case strings.HasPrefix(p, "/api/packages/") && r.method == http.MethodPut:
		return "upload_package"
	case strings.HasPrefix(p, "/api/packages/"):
		return "check_package"
	}
	return "other"
}

// outcomeOf classes an error as callers see it.
func outcomeOf(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, domain.ErrDeadline):
		return "deadline"
	case errors.Is(err, domain.ErrNotFound):
		return "not_found"
	case errors.Is(err, domain.ErrUnauthenticated):
		return "unauthenticated"
	case errors.Is(err, domain.ErrInvalid):
		return "invalid"
	case errors.Is(err, domain.ErrUnavailable):
		return "unavailable"
	}
	return "error"
}

// ObserveBreaker reports the breaker's state (0 closed, 1 open, 2 half-open) as the gauge
// rex.ray.breaker.state until the returned function is called. A binary calls it once, for
// the client it serves with.
func (c *Client) ObserveBreaker() (stop func()) {
	g, err := meter.Int64ObservableGauge("rex.ray.breaker.state",
		metric.WithDescription("the Ray client's circuit breaker: 0 closed, 1 open, 2 half-open"))
	if err != nil {
		otel.Handle(err)
		return func() {}
	}
	reg, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(g, int64(c.Breaker()))
		return nil
	}, g)
	if err != nil {
		otel.Handle(err)
		return func() {}
	}
	return func() { _ = reg.Unregister() }
}
