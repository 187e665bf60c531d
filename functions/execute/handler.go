package execute

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

// NewHandler returns the function's HTTP handler: ExecuteDeliberation,
// ExecuteBacklogReviewDeliberation and CancelDeliberation request events in, reply events
// out.
func NewHandler(svc *Service, source string, maxBodyBytes int64, logger *slog.Logger) *rpcevents.Server {
	srv := rpcevents.NewServer(source, logger, maxBodyBytes)
	srv.Handle(rpcevents.TypeExecuteDeliberation, rpcevents.Route(
		func() *pb.ExecuteDeliberationRequest { return &pb.ExecuteDeliberationRequest{} },
		func(ctx context.Context, r *rpcevents.Request, req *pb.ExecuteDeliberationRequest) (proto.Message, error) {
			return svc.respond(ctx, r, deliberationRequest(req))
		}))
	srv.Handle(rpcevents.TypeExecuteBacklogReviewDeliberation, rpcevents.Route(
		func() *pb.ExecuteBacklogReviewDeliberationRequest {
			return &pb.ExecuteBacklogReviewDeliberationRequest{}
		},
		func(ctx context.Context, r *rpcevents.Request, req *pb.ExecuteBacklogReviewDeliberationRequest) (proto.Message, error) {
			return svc.respond(ctx, r, backlogRequest(req))
		}))
	srv.Handle(rpcevents.TypeCancelDeliberation, rpcevents.Route(
		func() *pb.CancelDeliberationRequest { return &pb.CancelDeliberationRequest{} },
		func(ctx context.Context, r *rpcevents.Request, req *pb.CancelDeliberationRequest) (proto.Message, error) {
			c, err := svc.Cancel(ctx, req.GetDeliberationId(), r.Caller(), r.Logger())
			if err != nil {
				return nil, err
			}
			return &pb.CancelDeliberationResponse{
				DeliberationId: req.GetDeliberationId(),
				Status:         string(c.Status),
				Message:        c.Message,
			}, nil
		}))
	return srv
}

func (s *Service) respond(ctx context.Context, r *rpcevents.Request, req domain.Request) (proto.Message, error) {
	// The request's server span carries the trace on (the event's traceparent when no
	// exporter is configured): the record and the work message hold it for the executor.
	tp := telemetry.Traceparent(ctx)
	if tp == "" {
		tp = r.Traceparent()
	}
	start := time.Now()
	sub, err := s.Execute(ctx, req, r.IdempotencyKey(), tp, r.Caller(), r.Logger())
	observeSubmit(ctx, req.Kind, start, sub, err)
	if err != nil {
		return nil, err
	}
	msg := "deliberation accepted and queued for the executor on Ray"
	if sub.Duplicate {
		msg = "deliberation already submitted with this idempotency key"
	}
	return &pb.ExecuteDeliberationResponse{
		TaskId:         req.TaskID,
		DeliberationId: sub.DeliberationID,
		Status:         "submitted",
		Message:        msg,
		Duplicate:      sub.Duplicate,
	}, nil
}

func agents(in []*pb.Agent) []domain.Agent {
	out := make([]domain.Agent, len(in))
	for i, a := range in {
		out[i] = domain.Agent{
			ID:             a.GetId(),
			Role:           a.GetRole(),
			Model:          a.GetModel(),
			PromptTemplate: a.GetPromptTemplate(),
			VLLMURL:        a.GetVllmUrl(),
		}
	}
	return out
}

// executeRequest is what the two execute messages share (their constraints differ).
type executeRequest interface {
	GetTaskId() string
	GetTaskDescription() string
	GetRole() string
	GetAgents() []*pb.Agent
	GetVllmUrl() string
	GetVllmModel() string
}

func request(kind domain.Kind, req executeRequest, c domain.Constraints) domain.Request {
	return domain.Request{
		Kind:            kind,
		TaskID:          req.GetTaskId(),
		TaskDescription: req.GetTaskDescription(),
		Role:            req.GetRole(),
		Constraints:     c,
		Agents:          agents(req.GetAgents()),
		VLLMURL:         req.GetVllmUrl(),
		VLLMModel:       req.GetVllmModel(),
	}
}

func deliberationRequest(req *pb.ExecuteDeliberationRequest) domain.Request {
	c := req.GetConstraints()
	return request(domain.KindDeliberation, req, domain.Constraints{
		StoryID:        c.GetStoryId(),
		PlanID:         c.GetPlanId(),
		TimeoutSeconds: c.GetTimeoutSeconds(),
		MaxRetries:     c.GetMaxRetries(),
		Metadata:       c.GetMetadata(),
	})
}

// backlogRequest: backlog reviews have no plan (BacklogReviewTaskConstraints lacks plan_id).
func backlogRequest(req *pb.ExecuteBacklogReviewDeliberationRequest) domain.Request {
	c := req.GetConstraints()
	return request(domain.KindBacklogReview, req, domain.Constraints{
		StoryID:        c.GetStoryId(),
		TimeoutSeconds: c.GetTimeoutSeconds(),
		MaxRetries:     c.GetMaxRetries(),
		Metadata:       c.GetMetadata(),
	})
}
