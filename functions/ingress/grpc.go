package ingress

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/tap"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
)

// NewGRPCServer registers the service, grpc.health.v1 and (optionally) reflection.
func NewGRPCServer(s *Server, cfg Config) *grpc.Server {
	logger := s.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	gs := grpc.NewServer(ServerOptions(cfg, NewAccessLog(logger))...)
	pb.RegisterRayExecutorServiceServer(gs, s)
	healthpb.RegisterHealthServer(gs, &healthService{h: s.Health})
	if cfg.Reflection {
		reflection.Register(gs)
	}
	return gs
}

// maxSendMessageBytes is the largest reply the ingress passes on: what rpcevents.Client
// accepts from a function (GetActiveJobs of a busy cluster is the largest).
const maxSendMessageBytes = 64 << 20

// maxHeaderListBytes bounds a call's metadata: an authorization, an idempotency key and a
// traceparent need a fraction of it, and every token presented is hashed in full.
const maxHeaderListBytes = 64 << 10

// ServerOptions are the ingress's gRPC server settings: size and stream limits, TLS when
// configured, the access log around and the Guard in front of every RPC. Stream workers are reused goroutines: a
// fresh goroutine per RPC would grow its stack again on every call through the CloudEvents
// and JSON code (5% of the chain's CPU in `make bench` without them).
func ServerOptions(cfg Config, access *AccessLog) []grpc.ServerOption {
	guard := NewGuard(cfg.Auth, cfg.Limits)
	tapped := func(ctx context.Context, info *tap.Info) (context.Context, error) {
		ctx, err := guard.Tap(ctx, info)
		if err != nil {
			access.Refused(ctx, info.FullMethodName, err)
		}
		return ctx, err
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxMessageBytes),
		grpc.MaxSendMsgSize(maxSendMessageBytes),
		grpc.MaxHeaderListSize(maxHeaderListBytes),
		grpc.NumStreamWorkers(uint32(4 * runtime.GOMAXPROCS(0))),
		grpc.ForceServerCodecV2(newTolerantCodec()),
		// Credentials are checked from the headers before the message is read (Guard.Tap), so
		// only a caller let in learns that its message did not decode (decodeUnary, first so
		// that it always forgets the failure it answers), then the caller's limits. The access
		// log is outermost: it sees every outcome, refusals included, and makes the server span.
		grpc.InTapHandle(tapped),
		grpc.ChainUnaryInterceptor(access.Unary, decodeUnary, guard.Unary),
		grpc.ChainStreamInterceptor(access.Stream, decodeStream, guard.Stream),
	}
	if cfg.MaxConcurrentStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(uint32(cfg.MaxConcurrentStreams)))
	}
	opts = append(opts, keepaliveOptions(cfg)...)
	if cfg.Auth.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.Auth.TLS)))
	}
	return opts
}

// keepalive policy: a client may ping at most every KeepaliveMinTime, and only while it has
// RPCs open (more is answered GOAWAY "too_many_pings": a ping flood costs the server, and
// grpc-go clients never ping that often by default); the server pings an idle connection
// after a minute to find dead peers and drops it when the ping goes 20 s unanswered; a
// connection with no RPC for MAX_CONNECTION_IDLE is closed; a TLS handshake has 10 s.
const KeepaliveMinTime = 10 * time.Second

func keepaliveOptions(cfg Config) []grpc.ServerOption {
	idle := cfg.MaxConnectionIdle
	if idle <= 0 {
		idle = 5 * time.Minute
	}
	return []grpc.ServerOption{
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: KeepaliveMinTime}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: idle, Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.ConnectionTimeout(10 * time.Second),
	}
}

// Serve runs gs on ln until ctx is done, then reports NOT_SERVING, lets in-flight calls
// finish within drain, and stops.
func Serve(ctx context.Context, gs *grpc.Server, ln net.Listener, h *Health, drain time.Duration, logger *slog.Logger) error {
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	logger.Info("listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("ingress: %w", err)
	case <-ctx.Done():
	}
	logger.Info("draining", "timeout", drain.String())
	h.Drain()
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(drain):
		logger.Warn("drain timed out; stopping in-flight calls")
		gs.Stop()
	}
	<-errc
	logger.Info("stopped")
	return nil
}
