package status

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// rex.status.cache.lookups (README "Metrics") counts the reads of a deliberation's record by
// where the answer came from: hit (the cache of finished reports), miss (a finished
// deliberation read from NATS, then cached) or active (one not finished yet, read from NATS
// and never cached). hit / (hit + miss) is what RESULT_CACHE_SIZE and RESULT_CACHE_BYTES buy.
var cacheLookups metric.Int64Counter

var (
	lookupHit    = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "hit")))
	lookupMiss   = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "miss")))
	lookupActive = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", "active")))
)

func init() {
	var err error
	if cacheLookups, err = otel.Meter("github.com/fleet-ai/ray-executor/functions/status").Int64Counter("rex.status.cache.lookups",
		metric.WithDescription("reads of a deliberation's record, by where the answer came from (hit, miss, active)")); err != nil {
		otel.Handle(err)
	}
}

func countLookup(ctx context.Context, result metric.AddOption) { cacheLookups.Add(ctx, 1, result) }
