package serving

import (
	"context"
	"sync/atomic"
)

// Readiness that does not cascade (issue 15). Kubernetes and Knative route to a replica
// only while its readiness probe passes; were that probe to follow NATS or Ray, every
// replica of every function would turn unready together when a dependency has trouble, and
// callers would wait in Knative's activator instead of getting a fast, retryable 503 (and
// UNAVAILABLE through the ingress) that says why. So the probes that decide routing (the
// kubelet's, queue-proxy's, Knative's network probe) ask Ready only until it first passes
// (start-up: connected, streams provisioned, so a replica woken from zero is not sent a
// request it can only refuse); from then on the replica is ready while it serves. What is
// wrong with a dependency is told by each request's answer, GetStatus (the ingress asks
// GET /readyz without probe headers, which keeps asking Ready), the metrics and the logs.

// startedOnce returns a check that asks ready until it first passes, and from then on
// passes without asking.
func startedOnce(ready func(context.Context) error) func(context.Context) error {
	if ready == nil {
		return nil
	}
	var started atomic.Bool
	return func(ctx context.Context) error {
		if started.Load() {
			return nil
		}
		if err := ready(ctx); err != nil {
			return err
		}
		started.Store(true)
		return nil
	}
}
