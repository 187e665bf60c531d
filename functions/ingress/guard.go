package ingress

import (
	"context"
	"sync/atomic"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// Guard admits calls before any handler runs, unary and streaming alike: it authenticates
// them (AuthConfig), refuses read callers the RPCs that start or stop work, and holds each
// caller to Limits. Health checks are never counted against a caller, so a probe still
// answers when a caller is at its limit.
type Guard struct {
	auth          AuthConfig
	limits        *limiter
	healthWatches atomic.Int64
}

const healthWatchMethod = healthPrefix + "Watch"

// NewGuard is a Guard for auth and limits.
func NewGuard(auth AuthConfig, limits Limits) *Guard {
	return &Guard{auth: auth, limits: newLimiter(limits)}
}

// identityKey carries the identity Tap established into the call's context.
type identityKey struct{}

// CallerOf is who the call in ctx is from, as the functions are told (rpcevents.CallOptions):
// the authenticated caller, anonymous (the zero Caller) when access control is off.
func CallerOf(ctx context.Context) domain.Caller {
	id, ok := ctx.Value(identityKey{}).(identity)
	if !ok || id.name == anonymous {
		return domain.Caller{}
	}
	return domain.Caller{Name: id.name, Admin: id.access == AccessAdmin}
}

// Tap authenticates a call from its headers alone, before grpc-go reads its message: a
// caller without a valid credential costs a header lookup, never a 4 MiB read and decode,
// and learns nothing of the schema (it gets UNAUTHENTICATED, never a decoding error). The
// identity rides in the context to the interceptors. Installed with grpc.InTapHandle; it
// runs on the connection's reader goroutine, so it only hashes and compares.
func (g *Guard) Tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	id, err := g.identify(ctx, info.FullMethodName)
	if id.name != "" { // a caller refused for its role is still named (the access log)
		ctx = context.WithValue(ctx, identityKey{}, id)
	}
	return ctx, err
}

// identify authenticates a call to method and checks that its caller may call it; a
// caller refused for its role is returned with the refusal.
func (g *Guard) identify(ctx context.Context, method string) (identity, error) {
	if (isHealth(method) && g.auth.OpenHealth) || (isReflection(method) && g.auth.OpenReflection) {
		return identity{name: anonymous}, nil
	}
	id, err := g.auth.authenticate(ctx)
	if err != nil {
		return identity{}, err
	}
	if writeMethods[method] && id.access == AccessRead {
		return id, status.Errorf(codes.PermissionDenied, "caller %q has read access only and may not call %s", id.name, method)
	}
	return id, nil
}

// admit lets a call to method in, or says why not. The returned release ends its count.
// The identity is Tap's when it ran (the server's path); otherwise it is established here.
func (g *Guard) admit(ctx context.Context, method string) (release func(), err error) {
	id, ok := ctx.Value(identityKey{}).(identity)
	if !ok {
		if id, err = g.identify(ctx, method); err != nil {
			return nil, err
		}
	}
	if method == healthWatchMethod {
		max := int64(g.limits.limits.MaxHealthWatches)
		if max <= 0 {
			max = 100
		}
		if g.healthWatches.Add(1) > max {
			g.healthWatches.Add(-1)
			return nil, status.Errorf(codes.ResourceExhausted,
				"%d health Watch streams are open on this replica, the most it takes (HEALTH_MAX_WATCHES); use Check, or retry later", max)
		}
		return func() { g.healthWatches.Add(-1) }, nil
	}
	if isHealth(method) {
		return func() {}, nil
	}
	return g.limits.admit(id.name, submitMethods[method])
}

// Unary is the guard as a unary server interceptor.
func (g *Guard) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	release, err := g.admit(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	defer release()
	return handler(ctx, req)
}

// Stream is the guard as a stream server interceptor (WatchDeliberation, health Watch,
// reflection); a stream counts against its caller for as long as it is open.
func (g *Guard) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	release, err := g.admit(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	defer release()
	return handler(srv, ss)
}
