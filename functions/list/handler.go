package list

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// NewHandler returns the function's HTTP handler: GetActiveJobs request events in,
// GetActiveJobsResponse reply events out.
func NewHandler(svc *Service, source string, maxBodyBytes int64, logger *slog.Logger) *rpcevents.Server {
	srv := rpcevents.NewServer(source, logger, maxBodyBytes)
	srv.Handle(rpcevents.TypeGetActiveJobs, rpcevents.Route(
		func() *pb.GetActiveJobsRequest { return &pb.GetActiveJobsRequest{} },
		func(ctx context.Context, _ *rpcevents.Request, _ *pb.GetActiveJobsRequest) (proto.Message, error) {
			active, err := svc.Active(ctx)
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
	return srv
}

// JobInfo renders an active deliberation as the original did: job_id = submission_id =
// deliberation id, name "vllm-agent-job-<id>", status in Ray's words.
func JobInfo(a Active, now time.Time) *pb.JobInfo {
	id := a.Meta.DeliberationID
	info := &pb.JobInfo{
		JobId:        id,
		Name:         "vllm-agent-job-" + id,
		Status:       string(a.Status),
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
