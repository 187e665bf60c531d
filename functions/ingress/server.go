// Package ingress is the gRPC front door: a plain grpc.Server that turns each
// RayExecutorService RPC into a CloudEvent for the function that handles it, and the reply
// event back into the RPC's response. It holds no state of its own.
package ingress

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

// Metadata keys the ingress carries into the request event.
const (
	MetadataIdempotencyKey = "idempotency-key"
	MetadataTraceparent    = "traceparent"
)

// Caller sends one request event and decodes the reply (rpcevents.Client).
type Caller interface {
	Call(ctx context.Context, url, ceType string, req proto.Message, opts rpcevents.CallOptions, resp proto.Message) error
}

// NewHTTPClient is the ingress's client for the functions: many idle connections per host
// (every RPC goes to one of three), and no gzip negotiation (replies are small and local).
func NewHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	tr.DisableCompression = true
	return &http.Client{Transport: tr}
}

// Routes are the functions' URLs.
type Routes struct {
	Execute, Status, List string
}

// Server implements RayExecutorService by routing to the functions.
type Server struct {
	pb.UnimplementedRayExecutorServiceServer

	Caller Caller
	Routes Routes
	Health *Health
	// DefaultTimeout bounds a downstream call when the caller set no deadline.
	DefaultTimeout time.Duration
	Logger         *slog.Logger
	Started        time.Time
	// Events serves WatchDeliberation; nil when events are off.
	Events Watcher
}

var _ pb.RayExecutorServiceServer = (*Server)(nil)

func (s *Server) ExecuteDeliberation(ctx context.Context, req *pb.ExecuteDeliberationRequest) (*pb.ExecuteDeliberationResponse, error) {
	resp := &pb.ExecuteDeliberationResponse{}
	return resp, s.call(ctx, s.Routes.Execute, rpcevents.TypeExecuteDeliberation, req, resp)
}

func (s *Server) ExecuteBacklogReviewDeliberation(ctx context.Context, req *pb.ExecuteBacklogReviewDeliberationRequest) (*pb.ExecuteDeliberationResponse, error) {
	resp := &pb.ExecuteDeliberationResponse{}
	return resp, s.call(ctx, s.Routes.Execute, rpcevents.TypeExecuteBacklogReviewDeliberation, req, resp)
}

func (s *Server) CancelDeliberation(ctx context.Context, req *pb.CancelDeliberationRequest) (*pb.CancelDeliberationResponse, error) {
	resp := &pb.CancelDeliberationResponse{}
	return resp, s.call(ctx, s.Routes.Execute, rpcevents.TypeCancelDeliberation, req, resp)
}

// GetDeliberationStatus answers an unknown deliberation with OK and status "not_found", as
// the original did (its callers poll for that string); NOT_FOUND is used by the RPCs that
// act on a deliberation (CancelDeliberation).
func (s *Server) GetDeliberationStatus(ctx context.Context, req *pb.GetDeliberationStatusRequest) (*pb.GetDeliberationStatusResponse, error) {
	resp := &pb.GetDeliberationStatusResponse{}
	return resp, s.call(ctx, s.Routes.Status, rpcevents.TypeGetDeliberationStatus, req, resp)
}

func (s *Server) GetActiveJobs(ctx context.Context, req *pb.GetActiveJobsRequest) (*pb.GetActiveJobsResponse, error) {
	resp := &pb.GetActiveJobsResponse{}
	return resp, s.call(ctx, s.Routes.List, rpcevents.TypeGetActiveJobs, req, resp)
}

// traceparentOf is the trace context a call carries on: its server span's (AccessLog.start; the
// caller's own, passed through, when no exporter is configured), else a valid traceparent
// the caller sent.
func traceparentOf(ctx context.Context) string {
	if tp := telemetry.Traceparent(ctx); tp != "" {
		return tp
	}
	return domain.CleanTraceparent(first(ctx, MetadataTraceparent))
}

// call sends one request event, bounded by the caller's deadline (or DefaultTimeout), with
// the caller's idempotency key and trace context.
func (s *Server) call(ctx context.Context, url, ceType string, req, resp proto.Message) error {
	if _, ok := ctx.Deadline(); !ok && s.DefaultTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.DefaultTimeout)
		defer cancel()
	}
	opts := rpcevents.CallOptions{
		IdempotencyKey: first(ctx, MetadataIdempotencyKey),
		Traceparent:    traceparentOf(ctx),
		Caller:         CallerOf(ctx),
	}
	err := s.Caller.Call(ctx, url, ceType, req, opts, resp)
	if err != nil {
		gerr := GRPCError(err)
		if status.Code(gerr) == codes.Internal || status.Code(gerr) == codes.Unavailable {
			s.Logger.Warn("downstream call failed", "type", ceType, "code", status.Code(gerr).String(), "error", err.Error())
		}
		return gerr
	}
	return nil
}

// first is the first value of an incoming metadata key (without copying the metadata).
func first(ctx context.Context, key string) string {
	if v := metadata.ValueFromIncomingContext(ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// GRPCError is the ingress's one mapping from error to gRPC status. Internal is only for the
// unrecognised, and then with a generic message (the detail is logged, not sent).
func GRPCError(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var se *rpcevents.StatusError
	if errors.As(err, &se) {
		msg = se.Message // the function's own words, without transport noise
	}
	switch {
	case errors.Is(err, domain.ErrInvalid):
		return status.Error(codes.InvalidArgument, msg)
	case errors.Is(err, domain.ErrNotFound):
		return status.Error(codes.NotFound, msg)
	case errors.Is(err, domain.ErrConflict), errors.Is(err, domain.ErrAlreadyExists):
		return status.Error(codes.AlreadyExists, msg)
	case errors.Is(err, domain.ErrUnavailable), errors.Is(err, domain.ErrUnauthenticated):
		// ErrUnauthenticated here is a function or Ray refusing the ingress's own credential:
		// the caller did nothing wrong, the service is unavailable to it.
		return status.Error(codes.Unavailable, msg)
	case errors.Is(err, domain.ErrResourceExhausted):
		return status.Error(codes.ResourceExhausted, msg)
	case errors.Is(err, domain.ErrPermissionDenied):
		return status.Error(codes.PermissionDenied, msg)
	case errors.Is(err, domain.ErrDeadline), errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded before the deliberation service answered")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the call was cancelled")
	default:
		return status.Error(codes.Internal, "internal error")
	}
}
