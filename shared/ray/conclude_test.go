package ray

import (
	"testing"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

func TestConclude(t *testing.T) {
	const (
		completed = ResultMarker + `{"version":1,"status":"completed","num_agents":1,"completed_agents":1,"agents":[{"agent_id":"a","status":"completed"}]}`
		allFailed = ResultMarker + `{"version":1,"status":"failed","num_agents":1,"failed_agents":1,"error":"all 1 agents failed","agents":[{"agent_id":"a","status":"failed"}]}`
		// What the payload prints when it finds its cancelled event already stored.
		cancelled = ResultMarker + `{"version":1,"status":"cancelled","num_agents":2,"completed_agents":0,"failed_agents":0,"error":"cancelled before it started","agents":[]}`
	)
	// Ray's queued stop of a PENDING job can find the driver gone and leave this in the log.
	psutilTrace := "Traceback (most recent call last):\npsutil.NoSuchProcess: process no longer exists (pid=42)\n"
	cases := []struct {
		name       string
		status     JobStatus
		logs       string
		want       domain.Status
		wantType   string
		wantResult bool
	}{
		{"succeeded, an agent completed", StatusSucceeded, "noise\n" + completed + "\n", domain.StatusCompleted, "", true},
		{"succeeded, every agent failed", StatusSucceeded, allFailed + "\n", domain.StatusFailed, "all_agents_failed", true},
		{"succeeded without a result", StatusSucceeded, "noise\n", domain.StatusFailed, "no_result", false},
		{"stopped while running", StatusStopped, "", domain.StatusCancelled, "cancelled", false},
		{"failed without a result", StatusFailed, "", domain.StatusFailed, "job_failed", false},
		{"cancelled before it started, Ray says succeeded", StatusSucceeded, cancelled + "\n", domain.StatusCancelled, "cancelled", false},
		{"cancelled before it started, Ray says stopped", StatusStopped, cancelled + "\n", domain.StatusCancelled, "cancelled", false},
		{"cancelled before it started, Ray says failed", StatusFailed, cancelled + "\n" + psutilTrace, domain.StatusCancelled, "cancelled", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Conclude(JobDetails{Status: tc.status, ErrorType: "", Message: "m"}, tc.logs)
			if c.Status != tc.want || c.ErrorType != tc.wantType || (c.Outcome != nil) != tc.wantResult {
				t.Errorf("got %s / %q / outcome %v, want %s / %q / outcome %v",
					c.Status, c.ErrorType, c.Outcome != nil, tc.want, tc.wantType, tc.wantResult)
			}
		})
	}
	c := Conclude(JobDetails{Status: StatusFailed}, cancelled+"\n"+psutilTrace)
	if want := "the deliberation was cancelled: cancelled before it started"; c.ErrorMessage != want {
		t.Errorf("got message %q, want %q", c.ErrorMessage, want)
	}
}
