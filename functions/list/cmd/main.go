// Command list serves the list function: it lists this system's active deliberations.
package main

import (
	"context"
	"io"

	"github.com/fleet-ai/ray-executor/functions/list"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

func main() { serving.Main("list", run) }

// run wires the function from its configuration and serves until ctx is done.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, err := list.LoadConfig(getenv)
	if err != nil {
		return err
	}
	logger := serving.NewLogger(stdout, cfg.Serving, "list")
	client, err := ray.NewFromConfig(cfg.Ray)
	if err != nil {
		return err
	}
	var rec *list.Reconciler
	if cfg.Events.Enabled {
		bus, err := events.Connect(cfg.Events, "ray-executor-list", logger)
		if err != nil {
			return err
		}
		defer bus.Close()
		events.ProvisionInBackground(ctx, bus, logger)
		rec = &list.Reconciler{Jobs: client, Bus: bus, Logger: logger, Lookback: cfg.ReconcileLookback}
		if cfg.ReconcileInterval > 0 {
			go rec.Every(ctx, cfg.ReconcileInterval)
		}
	}
	h := list.NewHandler(&list.Service{Jobs: client}, rec, cfg.Source, cfg.MaxBodyBytes, logger)
	h.SetAccess(cfg.Access)
	go client.LogReachability(ctx, logger)
	return serving.Run(ctx, cfg.Serving, h, logger, serving.Options{Ready: client.Ready})
}
