package status

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// rex.status.cache.lookups (README "Metrics") counts the reads of a deliberation's record by
// where the answer came from: hit (the cache of finished reports), miss (a finished
// deliberation read from NATS, then cached) or active (one not finished yet, read from NATS
// and never cached). hit / (hit + miss) is what RESULT_CACHE_SIZE and RESULT_CACHE_BYTES buy.
// These are its attribute sets.
var (
	lookupHit    = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "hit")))
	lookupMiss   = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "miss")))
	lookupActive = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "active")))
)

// newLookupCounter makes the counter from the global meter provider as it is when the
// Service is made (after telemetry.Setup), not at package init: an instrument made before
// the first provider is installed stays bound to that first one.
func newLookupCounter() metric.Int64Counter {
	c, err := otel.Meter("github.com/fleet-ai/ray-executor/functions/status").Int64Counter("rex.status.cache.lookups",
		metric.WithDescription("reads of a deliberation's record, by where the answer came from (hit, miss, active)"))
	if err != nil {
		otel.Handle(err)
	}
	return c
}
