// Command ingress serves the RayExecutorService gRPC API and routes each call to a function.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/fleet-ai/ray-executor/functions/ingress"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/serving"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

func main() { serving.Main("ingress", run) }

// run wires the ingress from its configuration and serves until ctx is done.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	cfg, err := ingress.LoadConfig(getenv)
	if err != nil {
		return err
	}
	logger := serving.NewLogger(stdout, cfg.Serving, "ingress")
	tel, err := telemetry.Setup(ctx, cfg.Telemetry, logger)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tel.Shutdown(ctx)
	}()
	if cfg.Auth.Enabled() {
		logger.Info("access control on", "token_callers", cfg.Auth.Tokens.Len(), "mutual_tls", cfg.Auth.MutualTLS(),
			"open_health", cfg.Auth.OpenHealth, "open_reflection", cfg.Auth.OpenReflection)
	} else {
		logger.Warn("access control is off: the ingress accepts calls from anyone who can reach it; " +
			"set AUTH_TOKENS(_FILE) and/or TLS_CLIENT_CA_FILE in production")
	}
	hc := ingress.NewHTTPClient()
	health := &ingress.Health{
		HTTP: hc,
		TTL:  cfg.HealthTTL,
		Targets: []ingress.Target{
			{Name: "execute", URL: cfg.Routes.Execute},
			{Name: "status", URL: cfg.Routes.Status},
			{Name: "list", URL: cfg.Routes.List},
		},
	}
	srv := &ingress.Server{
		// A call to a function carries the RPC's server span in the event's traceparent
		// (ce-traceparent), which the function's server span continues; no client span of its
		// own: it would cost a third of the chain's tracing and say nothing the two do not.
		Caller:         &rpcevents.Client{HTTP: hc, Source: cfg.Source, Protobuf: true, Token: cfg.InternalToken},
		Routes:         cfg.Routes,
		Health:         health,
		DefaultTimeout: cfg.CallTimeout,
		Logger:         logger,
		Started:        time.Now(),
	}
	bus, err := natsbus.Connect(cfg.Events, "ray-executor-ingress", logger)
	if err != nil {
		return err
	}
	defer bus.Close()
	srv.Events = bus
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Serving.Host, fmt.Sprint(cfg.Serving.Port)))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	ln = ingress.LimitConns(ln, cfg.Conns, logger)
	return ingress.Serve(ctx, ingress.NewGRPCServer(srv, cfg), ln, health, cfg.Serving.DrainTimeout, logger)
}
