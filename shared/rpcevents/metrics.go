package rpcevents

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// The functions' request metrics (README "Metrics"): rex.function.inflight, the requests a
// replica is working on (those holding a MAX_INFLIGHT slot), and rex.function.refused, the
// requests answered with an error, by its code (unauthenticated, permission_denied,
// resource_exhausted, too_large, invalid_argument, not_found, conflict, unavailable,
// internal...): a bounded set.
var (
	inflightGauge metric.Int64UpDownCounter
	refusedCount  metric.Int64Counter
)

func init() {
	m := otel.Meter("github.com/fleet-ai/ray-executor/shared/rpcevents")
	var err error
	if inflightGauge, err = m.Int64UpDownCounter("rex.function.inflight",
		metric.WithDescription("requests a function replica is working on")); err != nil {
		otel.Handle(err)
	}
	if refusedCount, err = m.Int64Counter("rex.function.refused",
		metric.WithDescription("requests a function answered with an error, by its code")); err != nil {
		otel.Handle(err)
	}
}

func countRefused(code string) {
	refusedCount.Add(context.Background(), 1, metric.WithAttributes(attribute.String("reason", code)))
}
