// Command status serves the status function: it reports deliberations' state and results.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleet-ai/ray-executor/functions/status"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "status:", err)
		os.Exit(1)
	}
}

// run wires the function from its configuration and serves until ctx is done.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, err := status.LoadConfig(getenv)
	if err != nil {
		return err
	}
	logger := serving.NewLogger(stdout, cfg.Serving, "status")
	client, err := ray.New(ray.Config{Address: cfg.Ray.Address, Token: cfg.Ray.Token, Timeout: cfg.Ray.Timeout})
	if err != nil {
		return err
	}
	h := status.NewHandler(status.NewService(client, cfg.CacheSize), cfg.Source, cfg.MaxBodyBytes, logger)
	ready := func(ctx context.Context) error { _, err := client.Version(ctx); return err }
	return serving.Run(ctx, cfg.Serving, h, logger, serving.Options{Ready: ready})
}
