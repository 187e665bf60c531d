package executor

import (
	"context"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Why a deployer submitted an executor generation: the reason label of
// rex.executor.deploys (README "Metrics"; the alert RayExecutorCrashLooping counts crashed
// and stuck).
const (
	ReasonFirst   = "first"   // no executor was deployed yet
	ReasonRoll    = "roll"    // another version (payload or settings) ran
	ReasonLost    = "lost"    // Ray had no record of the job (a restarted head)
	ReasonEnded   = "ended"   // the job ended after running past CrashWindow
	ReasonCrashed = "crashed" // the job ended within CrashWindow of its submission
	ReasonStuck   = "stuck"   // the job ran StartupGrace without a heartbeat and was stopped
	// (when its successor waits a backoff, it counts as crashed: Ray reports it ended)
)

var deployReasons = [...]string{ReasonFirst, ReasonRoll, ReasonLost, ReasonEnded, ReasonCrashed, ReasonStuck}

// deploys counts this process's deploys by reason (deployReasons' order). Only the
// deployer that wins the deploy key's compare-and-set counts one, so the sum over every
// process is the number of generations submitted.
var deploys [len(deployReasons)]atomic.Int64

func countDeploy(reason string) {
	for i, r := range deployReasons {
		if r == reason {
			deploys[i].Add(1)
			return
		}
	}
}

// ObserveDeploys reports this process's deploys as the counter rex.executor.deploys, by
// reason, every reason from zero (so a rule's increase() sees the first one), until the
// returned function is called. A binary whose deployer runs calls it once, after its
// telemetry is set up.
func ObserveDeploys() (stop func()) {
	m := otel.Meter("github.com/fleet-ai/ray-executor/shared/executor")
	c, err := m.Int64ObservableCounter("rex.executor.deploys",
		metric.WithDescription("executor generations this process submitted to Ray, by reason"))
	if err != nil {
		otel.Handle(err)
		return func() {}
	}
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for i, r := range deployReasons {
			o.ObserveInt64(c, deploys[i].Load(), metric.WithAttributes(attribute.String("reason", r)))
		}
		return nil
	}, c)
	if err != nil {
		otel.Handle(err)
		return func() {}
	}
	return func() { _ = reg.Unregister() }
}
