package status

import (
	"context"
	"io"

	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

// Compose wires the status function from its configuration (read from getenv once, here):
// the handler its Knative binary serves through shared/serving and the module root
// registers with the Functions Framework. The Ray reachability log stops when ctx is done;
// Close releases the NATS connection.
func Compose(ctx context.Context, getenv func(string) string, stdout io.Writer) (*serving.Function, error) {
	cfg, err := LoadConfig(getenv)
	if err != nil {
		return nil, err
	}
	logger := serving.NewLogger(stdout, cfg.Serving, "status")
	client, err := ray.NewFromConfig(cfg.Ray)
	if err != nil {
		return nil, err
	}
	f := &serving.Function{Serving: cfg.Serving, Logger: logger, Ready: client.Ready}
	svc := NewService(client, cfg.CacheSize)
	svc.Logger = logger
	if cfg.Events.Enabled {
		bus, err := events.Connect(cfg.Events, "ray-executor-status", logger)
		if err != nil {
			return nil, err
		}
		f.OnClose(bus.Close)
		svc.Events = bus
	}
	h := NewHandler(svc, cfg.Source, cfg.MaxBodyBytes, logger)
	h.SetAccess(cfg.Access)
	f.Handler = h
	go client.LogReachability(ctx, logger)
	return f, nil
}
