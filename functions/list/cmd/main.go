// Command list serves the list function: it lists this system's active deliberations.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleet-ai/ray-executor/functions/list"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "list:", err)
		os.Exit(1)
	}
}

// run wires the function from its configuration and serves until ctx is done.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, err := list.LoadConfig(getenv)
	if err != nil {
		return err
	}
	logger := serving.NewLogger(stdout, cfg.Serving, "list")
	client, err := ray.New(ray.Config{Address: cfg.Ray.Address, Token: cfg.Ray.Token, Timeout: cfg.Ray.Timeout})
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
	ready := func(ctx context.Context) error { _, err := client.Version(ctx); return err }
	return serving.Run(ctx, cfg.Serving, h, logger, serving.Options{Ready: ready})
}
