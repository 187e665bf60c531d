package ingress

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Guard admits calls before any handler runs, unary and streaming alike: it authenticates
// them (AuthConfig), refuses read callers the RPCs that start or stop work, and holds each
// caller to Limits. Health checks are never counted against a caller, so a probe still
// answers when a caller is at its limit.
type Guard struct {
	auth   AuthConfig
	limits *limiter
}

// NewGuard is a Guard for auth and limits.
func NewGuard(auth AuthConfig, limits Limits) *Guard {
	return &Guard{auth: auth, limits: newLimiter(limits)}
}

// admit lets a call to method in, or says why not. The returned release ends its count.
func (g *Guard) admit(ctx context.Context, method string) (release func(), err error) {
	health := isHealth(method)
	id := identity{name: anonymous}
	if !(health && g.auth.OpenHealth) && !(isReflection(method) && g.auth.OpenReflection) {
		if id, err = g.auth.authenticate(ctx); err != nil {
			return nil, err
		}
		if writeMethods[method] && id.access != AccessWrite {
			return nil, status.Errorf(codes.PermissionDenied, "caller %q has read access only and may not call %s", id.name, method)
		}
	}
	if health {
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
