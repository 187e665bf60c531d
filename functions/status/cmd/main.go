// Command status serves the status function: it reports deliberations' state and results.
package main

import (
	"context"
	"io"

	"github.com/fleet-ai/ray-executor/functions/status"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

func main() { serving.Main("status", run) }

// run wires the function from its configuration and serves until ctx is done.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, err := status.LoadConfig(getenv)
	if err != nil {
		return err
	}
	logger := serving.NewLogger(stdout, cfg.Serving, "status")
	client, err := ray.NewFromConfig(cfg.Ray)
	if err != nil {
		return err
	}
	svc := status.NewService(client, cfg.CacheSize)
	svc.Logger = logger
	if cfg.Events.Enabled {
		bus, err := events.Connect(cfg.Events, "ray-executor-status", logger)
		if err != nil {
			return err
		}
		defer bus.Close()
		svc.Events = bus
	}
	h := status.NewHandler(svc, cfg.Source, cfg.MaxBodyBytes, logger)
	h.SetAccess(cfg.Access)
	go client.LogReachability(ctx, logger)
	return serving.Run(ctx, cfg.Serving, h, logger, serving.Options{Ready: client.Ready})
}
