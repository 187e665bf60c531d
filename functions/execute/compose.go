package execute

import (
	"context"
	"io"

	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

// Compose wires the execute function from its configuration (read from getenv once, here):
// the handler its Knative binary serves through shared/serving and the module root
// registers with the Functions Framework. Background work (the Ray reachability log, stream
// provisioning) stops when ctx is done; Close releases the NATS connection.
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
	f := &serving.Function{Serving: cfg.Serving, Logger: logger, Ready: client.Ready}
	name, zip := ray.PayloadPackage()
	svc := &Service{
		Jobs:        client,
		WorkingDirs: ray.NewPackager(client, name, zip, cfg.PackageFreshFor),
		Limits:      cfg.Limits,
		JobOptions: ray.JobOptions{AgentNumCPUs: cfg.AgentNumCPUs,
			EntrypointNumCPUs: cfg.EntrypointNumCPUs, EntrypointResources: cfg.EntrypointResources},
	}
	if cfg.Events.Enabled {
		bus, err := events.Connect(cfg.Events, "ray-executor-execute", logger)
		if err != nil {
			return nil, err
		}
		f.OnClose(bus.Close)
		events.ProvisionInBackground(ctx, bus, logger)
		svc.Events = bus
		svc.JobOptions.EnvVars = map[string]string{events.PayloadURLEnv: cfg.PayloadNATSURL,
			events.PayloadEventsStreamEnv: cfg.Events.EventsStream}
	}
	h := NewHandler(svc, cfg.Source, cfg.MaxBodyBytes, logger)
	h.SetAccess(cfg.Access)
	f.Handler = h
	go client.LogReachability(ctx, logger)
	return f, nil
}
