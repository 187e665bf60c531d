package list

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/ray"
)

type fakeJobs struct {
	JobsFn func(context.Context) ([]ray.JobDetails, error)
}

func (f fakeJobs) Jobs(ctx context.Context) ([]ray.JobDetails, error) { return f.JobsFn(ctx) }

func TestActiveListsOnlyOurPendingAndRunningJobs(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	ours := func(id string) map[string]string {
		return domain.JobMeta{DeliberationID: id, TaskID: "task-" + id, Role: "dev", NumAgents: 3}.Map()
	}
	jobs := []ray.JobDetails{
		{SubmissionID: "b", Status: ray.StatusRunning, Metadata: ours("b"), StartTime: t0.Add(time.Second)},
		{SubmissionID: "a", Status: ray.StatusPending, Metadata: ours("a"), StartTime: t0},
		{SubmissionID: "done", Status: ray.StatusSucceeded, Metadata: ours("done"), StartTime: t0},
		{SubmissionID: "stopped", Status: ray.StatusStopped, Metadata: ours("stopped"), StartTime: t0},
		{SubmissionID: "foreign", Status: ray.StatusRunning, Metadata: map[string]string{"x": "y"}},
		{Type: "DRIVER", Status: ray.StatusRunning},
	}
	svc := &Service{Jobs: fakeJobs{func(context.Context) ([]ray.JobDetails, error) { return jobs, nil }}}
	got, err := svc.Active(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Meta.DeliberationID != "a" || got[1].Meta.DeliberationID != "b" {
		t.Fatalf("got %+v, want a then b", got)
	}
	info := JobInfo(got[1], t0.Add(2*time.Minute+5*time.Second))
	if info.GetJobId() != "b" || info.GetSubmissionId() != "b" || info.GetName() != "vllm-agent-job-b" ||
		info.GetStatus() != "RUNNING" || info.GetTaskId() != "task-b" || info.GetRole() != "dev" ||
		info.GetRuntime() != "2m 4s" || info.GetTotalAgents() != 3 || !info.GetStartTime().AsTime().Equal(t0.Add(time.Second)) {
		t.Errorf("got %v", info)
	}
}

func TestActivePassesRayErrorsOn(t *testing.T) {
	svc := &Service{Jobs: fakeJobs{func(context.Context) ([]ray.JobDetails, error) { return nil, domain.ErrUnavailable }}}
	if _, err := svc.Active(context.Background()); !errors.Is(err, domain.ErrUnavailable) {
		t.Errorf("got %v, want ErrUnavailable", err)
	}
}

func TestRuntime(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	for _, tc := range []struct {
		start, now time.Time
		want       string
	}{
		{t0, t0, "0m 0s"},
		{t0, t0.Add(59 * time.Second), "0m 59s"},
		{t0, t0.Add(61*time.Minute + 1500*time.Millisecond), "61m 1s"},
		{time.Time{}, t0, "0m 0s"},
		{t0, t0.Add(-time.Second), "0m 0s"},
	} {
		if got := Runtime(tc.start, tc.now); got != tc.want {
			t.Errorf("Runtime(%v) got %q, want %q", tc.now.Sub(tc.start), got, tc.want)
		}
	}
}
