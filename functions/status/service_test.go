package status

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/ray"
)

type fakeJobs struct {
	JobFn  func(context.Context, string) (ray.JobDetails, error)
	LogsFn func(context.Context, string) (string, error)
}

func (f *fakeJobs) Job(ctx context.Context, id string) (ray.JobDetails, error) {
	return f.JobFn(ctx, id)
}
func (f *fakeJobs) Logs(ctx context.Context, id string) (string, error) { return f.LogsFn(ctx, id) }

const twoAgents = `{"version":1,"status":"completed","num_agents":2,"completed_agents":1,"failed_agents":1,` +
	`"agents":[{"agent_id":"a1","status":"completed","proposal":"p1","reasoning":"r1","score":0.5},` +
	`{"agent_id":"a2","status":"failed","error":"HTTP 500","error_type":"http_error"}]}`

const allFailed = `{"version":1,"status":"failed","num_agents":1,"completed_agents":0,"failed_agents":1,"error":"all 1 agents failed",` +
	`"agents":[{"agent_id":"a1","status":"failed","error":"HTTP 500","error_type":"http_error"}]}`

func TestStatusMapping(t *testing.T) {
	meta := domain.JobMeta{DeliberationID: "d1", TaskID: "t1", NumAgents: 2}.Map()
	cases := []struct {
		name      string
		status    ray.JobStatus
		md        map[string]string
		logs      string
		jobErr    error
		want      domain.Status
		wantType  string
		wantAgent int
		wantErr   error
	}{
		{"pending", ray.StatusPending, meta, "", nil, domain.StatusPending, "", 0, nil},
		{"running", ray.StatusRunning, meta, "", nil, domain.StatusRunning, "", 0, nil},
		{"succeeded with result", ray.StatusSucceeded, meta, "noise\n" + ray.ResultMarker + twoAgents + "\nmore\n", nil, domain.StatusCompleted, "", 2, nil},
		{"succeeded without result", ray.StatusSucceeded, meta, "hello\n", nil, domain.StatusFailed, "no_result", 0, nil},
		{"succeeded with a broken result", ray.StatusSucceeded, meta, ray.ResultMarker + "{oops\n", nil, domain.StatusFailed, "invalid_result", 0, nil},
		{"failed, every agent failed", ray.StatusFailed, meta, ray.ResultMarker + allFailed + "\n", nil, domain.StatusFailed, "all_agents_failed", 1, nil},
		{"failed before reporting", ray.StatusFailed, meta, "Traceback\n", nil, domain.StatusFailed, "JOB_ENTRYPOINT_COMMAND_ERROR", 0, nil},
		{"stopped", ray.StatusStopped, meta, "", nil, domain.StatusCancelled, "cancelled", 0, nil},
		{"unknown", "", nil, "", fmt.Errorf("ray: %w", domain.ErrNotFound), domain.StatusNotFound, "", 0, nil},
		{"foreign job", ray.StatusRunning, map[string]string{"other": "x"}, "", nil, domain.StatusNotFound, "", 0, nil},
		{"Ray down", "", nil, "", fmt.Errorf("ray: %w", domain.ErrUnavailable), "", "", 0, domain.ErrUnavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			jobs := &fakeJobs{
				JobFn: func(_ context.Context, id string) (ray.JobDetails, error) {
					return ray.JobDetails{SubmissionID: id, Status: tc.status, Metadata: tc.md,
						ErrorType: "JOB_ENTRYPOINT_COMMAND_ERROR", Message: "exit 1"}, tc.jobErr
				},
				LogsFn: func(context.Context, string) (string, error) { return tc.logs, nil },
			}
			rep, err := NewService(jobs, 8).Status(context.Background(), "d1")
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("got error %v, want %v", err, tc.wantErr)
			}
			if rep.Status != tc.want || rep.ErrorType != tc.wantType {
				t.Errorf("got %q/%q, want %q/%q", rep.Status, rep.ErrorType, tc.want, tc.wantType)
			}
			if n := len(Response(rep).GetAgentResults()); n != tc.wantAgent {
				t.Errorf("got %d agent results, want %d", n, tc.wantAgent)
			}
		})
	}
}

func TestFinishedReportsAreCachedAndActiveOnesAreNot(t *testing.T) {
	var jobCalls, logCalls int
	st := ray.StatusRunning
	jobs := &fakeJobs{
		JobFn: func(_ context.Context, id string) (ray.JobDetails, error) {
			jobCalls++
			return ray.JobDetails{SubmissionID: id, Status: st, Metadata: domain.JobMeta{DeliberationID: id}.Map()}, nil
		},
		LogsFn: func(context.Context, string) (string, error) {
			logCalls++
			return ray.ResultMarker + twoAgents + "\n", nil
		},
	}
	svc := NewService(jobs, 8)
	for i := 0; i < 3; i++ {
		if _, err := svc.Status(context.Background(), "d1"); err != nil {
			t.Fatal(err)
		}
	}
	if jobCalls != 3 || logCalls != 0 {
		t.Fatalf("running: got %d job and %d log calls, want 3 and 0", jobCalls, logCalls)
	}
	st = ray.StatusSucceeded
	for i := 0; i < 3; i++ {
		rep, err := svc.Status(context.Background(), "d1")
		if err != nil || rep.Status != domain.StatusCompleted {
			t.Fatalf("got %v %v, want completed", rep.Status, err)
		}
	}
	if jobCalls != 4 || logCalls != 1 {
		t.Errorf("finished: got %d job and %d log calls in all, want 4 and 1 (later reads cached)", jobCalls, logCalls)
	}
}

func TestResponseIsCompatible(t *testing.T) {
	out, ok, err := ray.ParseResult(ray.ResultMarker + twoAgents)
	if !ok || err != nil {
		t.Fatal(ok, err)
	}
	resp := Response(Report{DeliberationID: "d1", Status: domain.StatusCompleted, Outcome: &out})
	r := resp.GetResult()
	if r.GetAgentId() != "a1" || r.GetProposal() != "p1" || r.GetReasoning() != "r1" || r.GetScore() != 0.5 {
		t.Errorf("got result %v, want a1's proposal, reasoning and score", r)
	}
	md := r.GetMetadata()
	if md["total_agents"] != "2" || md["completed_agents"] != "1" || md["failed_agents"] != "1" || md["average_score"] != "0.5000" {
		t.Errorf("got metadata %v", md)
	}
	if resp.GetAgentResults()[1].GetError() != "HTTP 500" {
		t.Errorf("got %v, want a2's error", resp.GetAgentResults()[1])
	}
}

// Ids this system could not have minted (the original's, with ':'; any characters) are
// not_found without a call to Ray; only an empty or oversize id is a malformed request.
func TestForeignIDIsNotFoundWithoutAskingRay(t *testing.T) {
	asked := 0
	svc := NewService(&fakeJobs{JobFn: func(context.Context, string) (ray.JobDetails, error) {
		asked++
		return ray.JobDetails{}, domain.ErrNotFound
	}}, 8)
	for _, id := range []string{"a/b", "a.b", "../x", "deliberation-ceremony-c1:story-s1:role-QA-1733000000",
		"delib-*", "delib >", "délib", strings.Repeat("x", domain.MaxLookupIDBytes)} {
		rep, err := svc.Status(context.Background(), id)
		if err != nil || rep.Status != domain.StatusNotFound {
			t.Errorf("id %.40q: got %v, %v, want not_found and no error", id, rep.Status, err)
		}
	}
	if asked != 0 {
		t.Errorf("got %d calls to Ray for foreign ids, want none", asked)
	}
	for _, id := range []string{"", strings.Repeat("x", domain.MaxLookupIDBytes+1)} {
		if _, err := svc.Status(context.Background(), id); !errors.Is(err, domain.ErrInvalid) {
			t.Errorf("id of %d bytes: got %v, want ErrInvalid", len(id), err)
		}
	}
}
