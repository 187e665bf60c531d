package ingress

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

// AccessLog writes one structured line per RPC: who called what, how it ended, how long
// it took, which deliberation it was about and its trace. A refusal (credentials, limits,
// validation) is a line too, with the reason the caller was given. It never logs a token,
// a prompt or any other field of a request: ids, names and codes only.
//
// Health checks and reflection are logged at debug level: probes call them every second.
// Refusals before a call starts (Guard.Tap: no or a wrong credential) come from anyone at
// any rate, so they are logged at most tapRefusalsPerSecond per second per replica, the
// next line saying how many were left out.
type AccessLog struct {
	logger     *slog.Logger
	inflight   metric.Int64UpDownCounter
	refused    metric.Int64Counter
	duration   metric.Float64Histogram
	tapLimit   *rate.Limiter
	mu         sync.Mutex
	suppressed int
}

const (
	tapRefusalsPerSecond = 20
	tapRefusalsBurst     = 50
)

// NewAccessLog logs to logger. Make it after telemetry.Setup.
// Its metrics: rex.ingress.inflight (RPCs running, by method), rex.ingress.refused (calls
// refused, by reason and caller; callers are the configured names, so bounded) and
// rpc.server.call.duration (by rpc.method and rpc.response.status_code, the semantic
// conventions' names). It also makes each RPC's server span (health checks have none),
// joined to the trace the caller's traceparent metadata names: a span and a histogram
// with the attributes the access log has anyway, where otelgrpc's stats handler, which
// did it before, cost the chain more (BENCHMARKS.md "Tracing and metrics on the chain").
func NewAccessLog(logger *slog.Logger) *AccessLog {
	m := otel.Meter("github.com/fleet-ai/ray-executor/functions/ingress")
	inflight, err := m.Int64UpDownCounter("rex.ingress.inflight", metric.WithDescription("RPCs running at the ingress, by method"))
	if err != nil {
		otel.Handle(err)
	}
	refused, err := m.Int64Counter("rex.ingress.refused", metric.WithDescription("RPCs the ingress refused, by reason and caller"))
	if err != nil {
		otel.Handle(err)
	}
	return &AccessLog{logger: logger, tapLimit: rate.NewLimiter(tapRefusalsPerSecond, tapRefusalsBurst),
		inflight: inflight, refused: refused,
		duration: telemetry.DurationHistogram("rpc.server.call.duration", "duration of the RPCs the ingress served")}
}

// rpcSets are the duration's attribute sets: methods are the served ones (grpc-go calls no
// interceptor for an unknown method) and codes gRPC's.
var rpcSets = &telemetry.AttributeSets{NameKey: "rpc.method", CodeKey: "rpc.response.status_code"}

// start begins the RPC's server span, unless it is a health check.
func (a *AccessLog) start(ctx context.Context, fullMethod string) (context.Context, trace.Span) {
	if isHealth(fullMethod) {
		return ctx, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	name := strings.TrimPrefix(fullMethod, "/")
	return telemetry.StartServer(ctx, name, mdCarrier(md), attribute.String("rpc.system.name", "grpc"), attribute.String("rpc.method", name))
}

// end ends the span (an error for the codes that mean the server failed, as the semantic
// conventions have it) and records the duration.
func (a *AccessLog) end(ctx context.Context, span trace.Span, fullMethod string, err error, d time.Duration) {
	if span == nil {
		return
	}
	code := status.Code(err)
	canonical := canonicalCodes[code]
	if span.IsRecording() {
		span.SetAttributes(attribute.String("rpc.response.status_code", canonical))
		switch code {
		case codes.Unknown, codes.DeadlineExceeded, codes.Unimplemented, codes.Internal, codes.Unavailable, codes.DataLoss:
			span.SetStatus(otelcodes.Error, canonical)
		}
		span.End()
	}
	a.duration.Record(ctx, d.Seconds(), metric.WithAttributeSet(rpcSets.GetString(strings.TrimPrefix(fullMethod, "/"), canonical)))
}

// canonicalCodes are gRPC's codes as the semantic conventions spell them.
var canonicalCodes = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN", codes.InvalidArgument: "INVALID_ARGUMENT",
	codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED", codes.OutOfRange: "OUT_OF_RANGE",
	codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE",
	codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
}

// mdCarrier reads trace context from incoming gRPC metadata (keys are lower case there).
type mdCarrier metadata.MD

func (c mdCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c mdCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

func (c mdCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// refusalReasons are the codes that mean the ingress (or a function) refused a call.
var refusalReasons = map[codes.Code]string{
	codes.Unauthenticated:    "unauthenticated",
	codes.PermissionDenied:   "permission_denied",
	codes.ResourceExhausted:  "limit",
	codes.InvalidArgument:    "invalid",
	codes.FailedPrecondition: "failed_precondition",
	codes.Unavailable:        "unavailable",
}

// count records a refusal of a call that ended with err.
func (a *AccessLog) count(ctx context.Context, err error) {
	reason, ok := refusalReasons[status.Code(err)]
	if !ok {
		return
	}
	caller := anonymous
	if c := CallerOf(ctx); c.Name != "" {
		caller = c.Name
	}
	a.refused.Add(ctx, 1, metric.WithAttributes(attribute.String("reason", reason), attribute.String("caller", caller)))
}

// Unary logs each unary RPC; it goes first in the chain, so it sees every outcome.
func (a *AccessLog) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	ctx, span := a.start(ctx, info.FullMethod)
	method := metric.WithAttributes(attribute.String("method", info.FullMethod))
	a.inflight.Add(ctx, 1, method)
	resp, err := handler(ctx, req)
	a.inflight.Add(ctx, -1, method)
	id := deliberationID(req)
	if id == "" {
		id = deliberationID(resp)
	}
	a.annotate(ctx, req, id, err)
	d := time.Since(start)
	a.end(ctx, span, info.FullMethod, err, d)
	a.log(ctx, info.FullMethod, err, d, id)
	return resp, err
}

// Stream logs each stream when it ends, with the deliberation its first message named.
func (a *AccessLog) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	ctx, span := a.start(ss.Context(), info.FullMethod)
	method := metric.WithAttributes(attribute.String("method", info.FullMethod))
	a.inflight.Add(ctx, 1, method)
	rs := &recordingStream{ServerStream: ss, ctx: ctx}
	err := handler(srv, rs)
	a.inflight.Add(ctx, -1, method)
	a.annotate(ctx, nil, rs.id, err)
	d := time.Since(start)
	a.end(ctx, span, info.FullMethod, err, d)
	a.log(ctx, info.FullMethod, err, d, rs.id)
	return err
}

// annotate puts what the log line says on the RPC's span too: ids, the caller, the code.
func (a *AccessLog) annotate(ctx context.Context, req any, id string, err error) {
	a.count(ctx, err)
	caller := anonymous
	if c := CallerOf(ctx); c.Name != "" {
		caller = c.Name
	}
	attrs := []attribute.KeyValue{attribute.String("caller", caller), attribute.String("outcome", status.Code(err).String())}
	if id != "" {
		attrs = append(attrs, attribute.String("deliberation.id", id))
	}
	if t, ok := req.(interface{ GetTaskId() string }); ok && t.GetTaskId() != "" {
		attrs = append(attrs, attribute.String("task.id", clip(t.GetTaskId(), 256)))
	}
	telemetry.Annotate(ctx, attrs...)
}

// Refused logs a call refused before it started (Guard.Tap), within the rate bound.
func (a *AccessLog) Refused(ctx context.Context, method string, err error) {
	a.count(ctx, err)
	a.mu.Lock()
	if !a.tapLimit.Allow() {
		a.suppressed++
		a.mu.Unlock()
		return
	}
	left := a.suppressed
	a.suppressed = 0
	a.mu.Unlock()
	attrs := a.attrs(ctx, method, err, 0, "")
	if left > 0 {
		attrs = append(attrs, slog.Int("refusals_not_logged", left))
	}
	a.logger.LogAttrs(ctx, slog.LevelWarn, "rpc", attrs...)
}

func (a *AccessLog) log(ctx context.Context, method string, err error, d time.Duration, id string) {
	level := slog.LevelInfo
	code := status.Code(err)
	switch {
	case isHealth(method) || isReflection(method):
		level = slog.LevelDebug
		if code != codes.OK {
			level = slog.LevelInfo
		}
	case code == codes.Internal || code == codes.Unknown || code == codes.DataLoss:
		level = slog.LevelError
	case code != codes.OK && code != codes.NotFound && code != codes.Canceled:
		level = slog.LevelWarn
	}
	if !a.logger.Enabled(ctx, level) {
		return
	}
	a.logger.LogAttrs(ctx, level, "rpc", a.attrs(ctx, method, err, d, id)...)
}

func (a *AccessLog) attrs(ctx context.Context, method string, err error, d time.Duration, id string) []slog.Attr {
	caller := anonymous
	if c := CallerOf(ctx); c.Name != "" {
		caller = c.Name
	}
	code := status.Code(err)
	attrs := []slog.Attr{
		slog.String("method", method),
		slog.String("caller", caller),
		slog.String("code", code.String()),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
	}
	if id != "" {
		attrs = append(attrs, slog.String("deliberation_id", id))
	}
	if tid := traceID(ctx); tid != "" {
		attrs = append(attrs, slog.String("trace_id", tid))
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		attrs = append(attrs, slog.String("peer", peerIP(p.Addr)))
	}
	if code != codes.OK {
		// The message the caller was given: written for callers, it holds no secret; an
		// internal error's details are logged where they happen, not here.
		attrs = append(attrs, slog.String("reason", clip(status.Convert(err).Message(), 300)))
	}
	return attrs
}

// deliberationID is the id a request or response names, if any: ids only, no other field.
func deliberationID(m any) string {
	if v, ok := m.(interface{ GetDeliberationId() string }); ok {
		return clip(v.GetDeliberationId(), 128)
	}
	return ""
}

// traceID is the call's trace: its server span's (AccessLog.start; a new trace when the caller
// sent none and tracing is on), else that of the W3C traceparent the caller sent.
func traceID(ctx context.Context) string {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		return sc.TraceID().String()
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(MetadataTraceparent)
	if len(vals) == 0 {
		return ""
	}
	tp := domain.CleanTraceparent(vals[0])
	if tp == "" {
		return ""
	}
	return strings.Split(tp, "-")[1]
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// recordingStream remembers the deliberation id of the first message received, and
// carries the stream's context with its server span.
type recordingStream struct {
	grpc.ServerStream
	ctx context.Context
	id  string
}

func (s *recordingStream) Context() context.Context { return s.ctx }

func (s *recordingStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil && s.id == "" {
		s.id = deliberationID(m)
	}
	return err
}
