package list

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

// NewHandler returns the function's HTTP handler: GetActiveJobs request events in,
// GetActiveJobsResponse reply events out; GetStatus, answered with the statistics, the
// health of Ray and the executor, and this binary's version (serving.Commit); and, when rec
// is not nil, Reconcile and PingSource events, which run the reconciler (202, no reply).
func NewHandler(svc *Service, rec *Reconciler, source string, maxBodyBytes int64, logger *slog.Logger) *rpcevents.Server {
	srv := rpcevents.NewServer(source, logger, maxBodyBytes)
	if rec != nil {
		reconcile := func(ctx context.Context, r *rpcevents.Request) (proto.Message, error) {
			st, err := rec.Run(ctx)
			r.Logger().Info("reconciled", "executor", string(st))
			return nil, err
		}
		srv.Handle(rpcevents.TypeReconcile, reconcile)
		srv.Handle(rpcevents.TypePing, reconcile)
	}
	srv.Handle(rpcevents.TypeGetActiveJobs, rpcevents.Route(
		func() *pb.GetActiveJobsRequest { return &pb.GetActiveJobsRequest{} },
		func(ctx context.Context, r *rpcevents.Request, _ *pb.GetActiveJobsRequest) (proto.Message, error) {
			active, err := svc.Active(ctx, r.Caller())
			if err != nil {
				return nil, err
			}
			now := time.Now()
			if svc.Now != nil {
				now = svc.Now()
			}
			resp := &pb.GetActiveJobsResponse{}
			for _, a := range active {
				resp.Jobs = append(resp.Jobs, JobInfo(a, now))
			}
			return resp, nil
		}))
	srv.Handle(rpcevents.TypeGetStatus, rpcevents.Route(
		func() *pb.GetStatusRequest { return &pb.GetStatusRequest{} },
		func(ctx context.Context, r *rpcevents.Request, req *pb.GetStatusRequest) (proto.Message, error) {
			st, err := svc.Stats(ctx, r.Caller())
			if err != nil {
				return nil, err
			}
			resp := &pb.GetStatusResponse{Status: Healthy, Version: serving.Commit(), Stats: StatsMessage(st)}
			for _, c := range svc.Health(ctx) {
				resp.Components = append(resp.Components, &pb.ComponentHealth{Name: c.Name, Status: c.Status, Message: c.Message})
				if c.Status != Healthy {
					resp.Status = Degraded
				}
			}
			return resp, nil
		}))
	return srv
}

// StatsMessage renders statistics; active counts pending and running deliberations.
func StatsMessage(st Stats) *pb.RayExecutorStats {
	return &pb.RayExecutorStats{
		TotalDeliberations:     st.Total,
		ActiveDeliberations:    st.Pending + st.Running,
		CompletedDeliberations: st.Completed,
		FailedDeliberations:    st.Failed,
		AverageExecutionTimeMs: float32(st.AverageExecutionMS),
		CancelledDeliberations: st.Cancelled,
		PendingDeliberations:   st.Pending,
	}
}

// JobInfo renders an active deliberation as the original did: job_id = submission_id =
// deliberation id, name "vllm-agent-job-<id>", status in Ray's words.
func JobInfo(a Active, now time.Time) *pb.JobInfo {
	id := a.Meta.DeliberationID
	info := &pb.JobInfo{
		JobId:        id,
		Name:         "vllm-agent-job-" + id,
		Status:       RayStatus(a.Status),
		SubmissionId: id,
		Role:         a.Meta.Role,
		TaskId:       a.Meta.TaskID,
		Runtime:      Runtime(a.StartTime, now),
		StoryId:      a.Meta.StoryID,
		PlanId:       a.Meta.PlanID,
		Kind:         string(a.Meta.Kind),
		TotalAgents:  int32(a.Meta.NumAgents),
		Message:      a.Message,
	}
	if !a.StartTime.IsZero() {
		info.StartTime = timestamppb.New(a.StartTime)
	}
	return info
}

// RayStatus renders a deliberation state in the words the original's job list used.
func RayStatus(s domain.Status) string {
	if s == domain.StatusRunning {
		return "RUNNING"
	}
	return "PENDING"
}
