package ingress

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// Watcher reads a deliberation's lifecycle events from the stream (natsbus.Bus).
type Watcher interface {
	Watch(ctx context.Context, id string, fn func(natsbus.Stored) bool) error
}

// WatchDeliberation streams one deliberation's lifecycle events from the first, live, and
// ends after its terminal event; a deliberation that finished before the call gets its whole
// history. Unknown deliberations are NOT_FOUND; a server built without an event reader
// (tests) answers FAILED_PRECONDITION.
func (s *Server) WatchDeliberation(req *pb.WatchDeliberationRequest, stream pb.RayExecutorService_WatchDeliberationServer) error {
	if s.Events == nil {
		return status.Error(codes.FailedPrecondition, "lifecycle events are not configured on this server")
	}
	id := req.GetDeliberationId()
	ours, err := domain.LookupDeliberationID(id)
	if err != nil {
		return GRPCError(err)
	}
	if !ours {
		return status.Error(codes.NotFound, "no such deliberation")
	}
	ctx := stream.Context()
	// Ask status first: an id nobody submitted would otherwise wait forever.
	var st pb.GetDeliberationStatusResponse
	if err := s.Caller.Call(ctx, s.Routes.Status, rpcevents.TypeGetDeliberationStatus,
		&pb.GetDeliberationStatusRequest{DeliberationId: id}, rpcevents.CallOptions{Caller: CallerOf(ctx)}, &st); err != nil {
		return GRPCError(err)
	}
	if st.GetStatus() == string(domain.StatusNotFound) {
		return status.Errorf(codes.NotFound, "deliberation %s does not exist", id)
	}
	var sendErr error
	err = s.Events.Watch(ctx, id, func(ev natsbus.Stored) bool {
		if ev.Kind().Terminal() && !s.recordBearsOut(ctx, id, ev) {
			return false // not the deliberation's end: skipped, and the watch goes on
		}
		if sendErr = stream.Send(&pb.WatchDeliberationResponse{Event: lifecycleEvent(ev)}); sendErr != nil {
			return true
		}
		return ev.Kind().Terminal()
	})
	if sendErr != nil {
		return sendErr
	}
	return GRPCError(err)
}

func lifecycleEvent(ev natsbus.Stored) *pb.LifecycleEvent {
	out := &pb.LifecycleEvent{
		Id:             ev.ID,
		Type:           ev.Type,
		Source:         ev.Source,
		Subject:        ev.Subject,
		DataJson:       string(ev.Data),
		StreamSequence: ev.Sequence,
		Kind:           string(ev.Kind()),
	}
	if !ev.Time.IsZero() {
		out.Time = timestamppb.New(ev.Time)
	}
	return out
}

// recordBearsOut reports whether the deliberation's record ended as terminal event ev says.
// The record is written before its terminal event is published, so a real one always
// agrees; a terminal event published by anyone else with access to the subject (a forged
// "cancelled" for a deliberation still running, or one not yet submitted) does not, and
// must neither end a watch nor reach a caller. When status cannot answer, the event is
// trusted: the stream's own publishers are limited by NATS permissions (README).
func (s *Server) recordBearsOut(ctx context.Context, id string, ev natsbus.Stored) bool {
	var st pb.GetDeliberationStatusResponse
	if err := s.Caller.Call(ctx, s.Routes.Status, rpcevents.TypeGetDeliberationStatus,
		&pb.GetDeliberationStatusRequest{DeliberationId: id}, rpcevents.CallOptions{Caller: CallerOf(ctx)}, &st); err != nil {
		return true
	}
	if st.GetStatus() == string(ev.Kind()) {
		return true
	}
	s.Logger.Warn("a terminal event the deliberation's record does not bear out was not passed on",
		"deliberation_id", id, "event_kind", string(ev.Kind()), "record_status", st.GetStatus(), "event_source", ev.Source)
	return false
}
