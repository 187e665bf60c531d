package execute

import (
	"context"
	"io"

	"github.com/fleet-ai/ray-executor/shared/executor"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

// Compose wires the execute function from its configuration (read from getenv once, here):
// the handler its Knative binary serves through shared/serving and the module root
// registers with the Functions Framework. Background work (the Ray reachability log,
// provisioning, the deployer that keeps the executor running) stops when ctx is done;
// Close releases the NATS connection.
func Compose(ctx context.Context, getenv func(string) string, stdout io.Writer) (*serving.Function, error) {
	cfg, err := LoadConfig(getenv)
	if err != nil {
		return nil, err
	}
	logger := serving.NewLogger(stdout, cfg.Serving, "execute")
	client, err := ray.NewFromConfig(cfg.Ray)
	if err != nil {
		return nil, err
	}
	bus, err := natsbus.Connect(cfg.Events, "ray-executor-execute", logger)
	if err != nil {
		return nil, err
	}
	store := records.New(bus.Conn(), bus.JetStream(), cfg.Records)
	// Ready when NATS is and the records resources exist: accepting and reading are NATS
	// operations, and Ray is not on the request path.
	f := &serving.Function{Serving: cfg.Serving, Logger: logger, Ready: records.Provision(ctx, bus, store, logger)}
	f.OnClose(bus.Close)
	dep := executor.NewDeployer(client, store, cfg.Executor, cfg.Events, cfg.PackageFreshFor, logger)
	poke := make(chan struct{}, 1)
	if cfg.Executor.Deploy {
		go dep.Run(ctx, cfg.Executor.Check, poke)
	}
	svc := &Service{
		Store: store, Events: bus, Limits: cfg.Limits,
		Poke: func() {
			select {
			case poke <- struct{}{}:
			default:
			}
		},
	}
	h := NewHandler(svc, cfg.Source, cfg.MaxBodyBytes, logger)
	h.SetAccess(cfg.Access)
	f.Handler = h
	go client.LogReachability(ctx, logger)
	if err := f.Instrument(ctx, cfg.Telemetry, "execute"); err != nil {
		f.Close()
		return nil, err
	}
	f.OnClose(client.ObserveBreaker())
	if cfg.Executor.Deploy {
		f.OnClose(executor.ObserveDeploys())
	}
	return f, nil
}
