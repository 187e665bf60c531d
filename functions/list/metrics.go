package list

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/fleet-ai/ray-executor/shared/records"
)

// queueReader is what the work-queue gauges read (records.Store).
type queueReader interface {
	Queue(ctx context.Context) (records.Queue, error)
	Heartbeat(ctx context.Context) (records.Heartbeat, bool, error)
}

// observeQueue reports the work queue and the executor as gauges, read when metrics are
// collected (a scrape of the metrics port, an OTLP export): rex.work_queue.waiting,
// rex.work_queue.in_flight, rex.work_queue.oldest_age (seconds the oldest waiting
// deliberation has waited) and rex.executor.replicas (0 without a live heartbeat). The list
// function reports them: it runs the reconciler, at about one replica. The returned
// function stops it.
func observeQueue(store queueReader, now func() time.Time) (stop func()) {
	m := otel.Meter("github.com/fleet-ai/ray-executor/functions/list")
	waiting, err1 := m.Int64ObservableGauge("rex.work_queue.waiting", metric.WithDescription("deliberations queued that no executor has pulled"))
	inFlight, err2 := m.Int64ObservableGauge("rex.work_queue.in_flight", metric.WithDescription("deliberations pulled and not yet acknowledged"))
	oldest, err3 := m.Float64ObservableGauge("rex.work_queue.oldest_age", metric.WithUnit("s"),
		metric.WithDescription("how long the oldest waiting deliberation has waited (0 when none waits)"))
	replicas, err4 := m.Int64ObservableGauge("rex.executor.replicas", metric.WithDescription("executor replicas answering its driver (0 without a live executor)"))
	for _, err := range []error{err1, err2, err3, err4} {
		if err != nil {
			otel.Handle(err)
			return func() {}
		}
	}
	reg, err := m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if q, err := store.Queue(ctx); err == nil {
			o.ObserveInt64(waiting, int64(q.Waiting))
			o.ObserveInt64(inFlight, int64(q.InFlight))
			age := 0.0
			if !q.Oldest.IsZero() {
				age = now().Sub(q.Oldest).Seconds()
			}
			o.ObserveFloat64(oldest, age)
		}
		n := 0
		if hb, ok, err := store.Heartbeat(ctx); err == nil && ok && hb.Fresh(now()) {
			n = hb.Replicas
		}
		o.ObserveInt64(replicas, int64(n))
		return nil
	}, waiting, inFlight, oldest, replicas)
	if err != nil {
		otel.Handle(err)
		return func() {}
	}
	return func() { _ = reg.Unregister() }
}
