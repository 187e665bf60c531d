package status

import (
	"context"
	"io"

	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

// Compose wires the status function from its configuration (read from getenv once, here):
// the handler its Knative binary serves through shared/serving and the module root
// registers with the Functions Framework. Provisioning stops when ctx is done; Close
// releases the NATS connection.
func Compose(ctx context.Context, getenv func(string) string, stdout io.Writer) (*serving.Function, error) {
	cfg, err := LoadConfig(getenv)
	if err != nil {
		return nil, err
	}
	logger := serving.NewLogger(stdout, cfg.Serving, "status")
	bus, err := natsbus.Connect(cfg.Events, "ray-executor-status", logger)
	if err != nil {
		return nil, err
	}
	store := records.New(bus.Conn(), bus.JetStream(), cfg.Records)
	var readers []*records.Store
	for range cfg.ReadConnections - 1 {
		nc, js, err := bus.Dial()
		if err != nil {
			bus.Close()
			return nil, err
		}
		readers = append(readers, records.New(nc, js, cfg.Records))
	}
	store.SpreadReads(readers...)
	// Ready when NATS is and the records resources exist: accepting and reading are NATS
	// operations, and Ray is not on the request path.
	f := &serving.Function{Serving: cfg.Serving, Logger: logger, Ready: records.Provision(ctx, bus, store, logger)}
	f.OnClose(bus.Close)
	svc := NewService(store, cfg.CacheSize, cfg.CacheBytes).WithExpiry(&Expiry{Store: store, Events: bus, Logger: logger})
	h := NewHandler(svc, cfg.Source, cfg.MaxBodyBytes, logger)
	h.SetAccess(cfg.Access)
	f.Handler = h
	if err := f.Instrument(ctx, cfg.Telemetry, "status"); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
