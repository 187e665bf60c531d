// Command execute serves the execute function: it submits deliberations to Ray.
package main

import (
	"context"
	"io"

	"github.com/fleet-ai/ray-executor/functions/execute"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

func main() { serving.Main("execute", run) }

// run wires the function from its configuration and serves until ctx is done.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, err := execute.LoadConfig(getenv)
	if err != nil {
		return err
	}
	logger := serving.NewLogger(stdout, cfg.Serving, "execute")
	client, err := ray.NewFromConfig(cfg.Ray)
	if err != nil {
		return err
	}
	name, zip := ray.PayloadPackage()
	svc := &execute.Service{
		Jobs:        client,
		WorkingDirs: ray.NewPackager(client, name, zip, cfg.PackageFreshFor),
		Limits:      cfg.Limits,
		JobOptions: ray.JobOptions{AgentNumCPUs: cfg.AgentNumCPUs,
			EntrypointNumCPUs: cfg.EntrypointNumCPUs, EntrypointResources: cfg.EntrypointResources},
	}
	if cfg.Events.Enabled {
		bus, err := events.Connect(cfg.Events, "ray-executor-execute", logger)
		if err != nil {
			return err
		}
		defer bus.Close()
		events.ProvisionInBackground(ctx, bus, logger)
		svc.Events = bus
		svc.JobOptions.EnvVars = map[string]string{events.PayloadURLEnv: cfg.PayloadNATSURL,
			events.PayloadEventsStreamEnv: cfg.Events.EventsStream}
	}
	h := execute.NewHandler(svc, cfg.Source, cfg.MaxBodyBytes, logger)
	h.SetAccess(cfg.Access)
	go client.LogReachability(ctx, logger)
	return serving.Run(ctx, cfg.Serving, h, logger, serving.Options{Ready: client.Ready})
}
