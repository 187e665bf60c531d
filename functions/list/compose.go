package list

import (
	"context"
	"io"
	"time"

	"github.com/fleet-ai/ray-executor/shared/executor"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

// Compose wires the list function from its configuration (read from getenv once, here): the
// handler its Knative binary serves through shared/serving and the module root registers
// with the Functions Framework. The reconciler's timer (RECONCILE_INTERVAL), provisioning
// and the Ray reachability log stop when ctx is done; Close releases the NATS connection.
func Compose(ctx context.Context, getenv func(string) string, stdout io.Writer) (*serving.Function, error) {
	cfg, err := LoadConfig(getenv)
	if err != nil {
		return nil, err
	}
	logger := serving.NewLogger(stdout, cfg.Serving, "list")
	client, err := ray.NewFromConfig(cfg.Ray)
	if err != nil {
		return nil, err
	}
	bus, err := natsbus.Connect(cfg.Events, "ray-executor-list", logger)
	if err != nil {
		return nil, err
	}
	store := records.New(bus.Conn(), bus.JetStream(), cfg.Records)
	// Ready when NATS is and the records resources exist: accepting and reading are NATS
	// operations, and Ray is not on the request path.
	f := &serving.Function{Serving: cfg.Serving, Logger: logger, Ready: records.Provision(ctx, bus, store, logger)}
	f.OnClose(bus.Close)
	rec := &Reconciler{Store: store, Events: bus, Logger: logger}
	if cfg.Executor.Deploy {
		rec.Deployer = executor.NewDeployer(client, store, cfg.Executor, cfg.Events, cfg.PackageFreshFor, logger)
	}
	if cfg.ReconcileInterval > 0 {
		go rec.Every(ctx, cfg.ReconcileInterval)
	}
	ray := &Probe{Check: client.Ready, TTL: ProbeTTL}
	h := NewHandler(&Service{Store: store, RayReady: ray.Ready, Logger: logger}, rec, cfg.Source, cfg.MaxBodyBytes, logger)
	h.SetAccess(cfg.Access)
	f.Handler = h
	go client.LogReachability(ctx, logger)
	if err := f.Instrument(ctx, cfg.Telemetry, "list"); err != nil {
		f.Close()
		return nil, err
	}
	f.OnClose(client.ObserveBreaker())
	f.OnClose(observeQueue(store, time.Now))
	if rec.Deployer != nil {
		f.OnClose(executor.ObserveDeploys())
	}
	return f, nil
}
