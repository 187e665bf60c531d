package status

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// NewHandler returns the function's HTTP handler: GetDeliberationStatus request events in,
// GetDeliberationStatusResponse reply events out.
func NewHandler(svc *Service, source string, maxBodyBytes int64, logger *slog.Logger) *rpcevents.Server {
	srv := rpcevents.NewServer(source, logger, maxBodyBytes)
	srv.Handle(rpcevents.TypeGetDeliberationStatus, rpcevents.Route(
		func() *pb.GetDeliberationStatusRequest { return &pb.GetDeliberationStatusRequest{} },
		func(ctx context.Context, r *rpcevents.Request, req *pb.GetDeliberationStatusRequest) (proto.Message, error) {
			rep, err := svc.Status(ctx, req.GetDeliberationId(), r.Caller())
			if err != nil {
				return nil, err
			}
			return Response(rep), nil
		}))
	return srv
}

// Response renders a report as the RPC's response: the compatible best result plus every
// agent's result.
func Response(rep Report) *pb.GetDeliberationStatusResponse {
	resp := &pb.GetDeliberationStatusResponse{
		DeliberationId: rep.DeliberationID,
		Status:         string(rep.Status),
		ErrorMessage:   rep.ErrorMessage,
		ErrorType:      rep.ErrorType,
		TaskId:         rep.Meta.TaskID,
		TotalAgents:    int32(rep.Meta.NumAgents),
		StartTime:      timestamp(rep.StartTime),
		EndTime:        timestamp(rep.EndTime),
	}
	o := rep.Outcome
	if o == nil {
		return resp
	}
	resp.TotalAgents = int32(len(o.Agents))
	resp.CompletedAgents = int32(o.CompletedAgents)
	resp.FailedAgents = int32(o.FailedAgents)
	for _, a := range o.Agents {
		resp.AgentResults = append(resp.AgentResults, &pb.AgentResult{
			AgentId:    a.AgentID,
			Role:       a.Role,
			Model:      a.Model,
			Status:     a.Status,
			Proposal:   a.Proposal,
			Reasoning:  a.Reasoning,
			Score:      float32(a.Score),
			Tokens:     a.Tokens,
			DurationMs: a.DurationMS,
			Attempts:   int32(a.Attempts),
			Error:      a.Error,
			ErrorType:  a.ErrorType,
		})
	}
	if sum, ok := o.Summarize(); ok {
		resp.Result = &pb.DeliberationResult{
			AgentId:   sum.Best.AgentID,
			Proposal:  sum.Best.Proposal,
			Reasoning: sum.Best.Reasoning,
			Score:     float32(sum.Best.Score),
			Metadata:  sum.Metadata,
		}
	}
	return resp
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
