//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// Every rule of COMPAT.md's validation list, and the limits added since, answer 400 with a
// message naming the field, and submit nothing to Ray.
func TestBadInputIsRefusedNamingTheField(t *testing.T) {
	t.Parallel()
	s := shared(t)
	prefix := uniqueTask(t)
	url := "http://127.0.0.1:9" // never called: nothing valid is submitted
	valid := func(n int) *pb.ExecuteDeliberationRequest {
		return request(fmt.Sprintf("%s-%d", prefix, n), url, "model-a")
	}
	backlog := func(n int) *pb.ExecuteBacklogReviewDeliberationRequest {
		v := valid(n)
		return &pb.ExecuteBacklogReviewDeliberationRequest{
			TaskId:          "ceremony-c1:story-s1:role-dev",
			TaskDescription: v.TaskDescription + " " + prefix,
			Role:            v.Role,
			Constraints:     &pb.BacklogReviewTaskConstraints{StoryId: "s1"},
			Agents:          v.Agents,
			VllmUrl:         v.VllmUrl,
			VllmModel:       v.VllmModel,
		}
	}
	manyAgents := valid(0)
	manyAgents.Agents = nil
	for i := 0; i < 10000; i++ {
		manyAgents.Agents = append(manyAgents.Agents, &pb.Agent{Id: fmt.Sprint("a", i), Role: "r", Model: "m"})
	}
	cases := []struct {
		name  string
		typ   string
		msg   proto.Message
		field string
	}{
		{"no task_id", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(1); r.TaskId = ""; return r }(), "task_id"},
		{"no description", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(2); r.TaskDescription = " "; return r }(), "task_description"},
		{"no role", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(3); r.Role = ""; return r }(), "role"},
		{"no vllm_url", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(4); r.VllmUrl = ""; return r }(), "vllm_url"},
		{"no vllm_model", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(5); r.VllmModel = ""; return r }(), "vllm_model"},
		{"no agents", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(6); r.Agents = nil; return r }(), "agents"},
		{"agent without id", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(7); r.Agents[0].Id = ""; return r }(), "agents[0].id"},
		{"agent without role", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(8); r.Agents[0].Role = ""; return r }(), "agents[0].role"},
		{"agent without model", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(9); r.Agents[0].Model = ""; return r }(), "agents[0].model"},
		{"no constraints", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(10); r.Constraints = nil; return r }(), "constraints.story_id"},
		{"negative timeout", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(11); r.Constraints.TimeoutSeconds = -1; return r }(), "constraints.timeout_seconds"},
		{"negative retries", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(12); r.Constraints.MaxRetries = -2; return r }(), "constraints.max_retries"},
		{"vllm_url not http", rpcevents.TypeExecuteDeliberation, func() proto.Message { r := valid(13); r.VllmUrl = "file:///etc/passwd"; return r }(), "vllm_url"},
		{"vllm_url outside the allowlist", rpcevents.TypeExecuteDeliberation, func() proto.Message {
			r := valid(17)
			r.VllmUrl = "http://169.254.169.254/latest/meta-data"
			return r
		}(), `vllm_url "http://169.254.169.254/latest/meta-data" is not an allowed LLM endpoint`},
		{"agent vllm_url outside the allowlist", rpcevents.TypeExecuteDeliberation, func() proto.Message {
			r := valid(18)
			r.Agents[0].VllmUrl = "http://internal-admin.svc:8080"
			return r
		}(), "agents[0].vllm_url"},
		// Refused for its shape before it is decoded, naming the field that holds the most.
		{"10,000 agents", rpcevents.TypeExecuteDeliberation, manyAgents, "of them in agents"},
		{"description too large", rpcevents.TypeExecuteDeliberation, func() proto.Message {
			r := valid(14)
			r.TaskDescription = strings.Repeat("x", 256<<10+1)
			return r
		}(), "task_description is 262145 bytes, more than the limit of 262144"},
		{"backlog task_id shape", rpcevents.TypeExecuteBacklogReviewDeliberation, func() proto.Message { r := backlog(15); r.TaskId = "story-1"; return r }(), "task_id must look like ceremony-<c>:story-<s>:role-<r>"},
		{"backlog no story", rpcevents.TypeExecuteBacklogReviewDeliberation, func() proto.Message { r := backlog(16); r.Constraints = nil; return r }(), "constraints.story_id"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var resp pb.ExecuteDeliberationResponse
			err := s.client.Call(context.Background(), s.execute.url, tc.typ, tc.msg, rpcevents.CallOptions{}, &resp)
			var se *rpcevents.StatusError
			if !errors.As(err, &se) || se.HTTPStatus != http.StatusBadRequest {
				t.Fatalf("got %v, want HTTP 400", err)
			}
			if !strings.Contains(se.Message, tc.field) {
				t.Errorf("got message %q, want it to name %q", se.Message, tc.field)
			}
		})
	}

	raw := []struct {
		name        string
		contentType string
		headers     map[string]string
		body        string
		want        int
		contains    string
	}{
		{"data not JSON", "application/json", ceHeaders(rpcevents.TypeExecuteDeliberation), "{not json", 400, "protobuf JSON"},
		{"deeply nested JSON", "application/json", ceHeaders(rpcevents.TypeExecuteDeliberation), strings.Repeat("[", 100000), 400, "more than 32 deep"},
		{"invalid UTF-8", "application/json", ceHeaders(rpcevents.TypeExecuteDeliberation), "{\"task_id\":\"\xff\xfe\"}", 400, "protobuf JSON"},
		{"wrong field type", "application/json", ceHeaders(rpcevents.TypeExecuteDeliberation), `{"agents":"many"}`, 400, "protobuf JSON"},
		{"not a CloudEvent", "application/json", nil, `{}`, 400, "CloudEvent"},
		{"unknown type", "application/json", ceHeaders("fleet.ray_executor.v1.Nope"), `{}`, 400, "fleet.ray_executor.v1.ExecuteDeliberation"},
		{"xml data", "application/xml", ceHeaders(rpcevents.TypeExecuteDeliberation), `<a/>`, 400, "datacontenttype"},
		{"oversized body", "application/json", ceHeaders(rpcevents.TypeExecuteDeliberation), `{"task_id":"` + strings.Repeat("x", 2<<20) + `"}`, 413, "larger than"},
	}
	for _, tc := range raw {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, s.execute.url, bytes.NewBufferString(tc.body))
			req.Header.Set("Content-Type", tc.contentType)
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, body, tc.want)
			}
			var eb rpcevents.ErrorBody
			if err := json.Unmarshal(body, &eb); err != nil || !strings.Contains(eb.Error.Message, tc.contains) {
				t.Errorf("got body %s, want a JSON error mentioning %q", body, tc.contains)
			}
		})
	}

	// The function is still up, and nothing was accepted.
	if r, err := http.Get(s.execute.url + "/healthz"); err != nil || r.StatusCode != 200 {
		t.Fatalf("execute is down after bad input: %v", err)
	}
	for _, r := range s.recordsWhere(t, func(r domain.Record) bool {
		return strings.HasPrefix(r.TaskID, prefix) || strings.Contains(r.TaskID, "ceremony-c1")
	}) {
		t.Errorf("deliberation %s (task %s) was accepted for refused input", r.ID, r.TaskID)
	}
}

func ceHeaders(typ string) map[string]string {
	return map[string]string{"ce-specversion": "1.0", "ce-id": "x1", "ce-source": "test", "ce-type": typ}
}

// The Ray jobs on the cluster that are not deliberations (the executor's own job, and those
// of other systems) are never listed or reported as deliberations.
func TestForeignJobsAreInvisible(t *testing.T) {
	t.Parallel()
	s := shared(t)
	dep, _, err := s.store.Deploy(context.Background())
	if err != nil || dep.SubmissionID == "" {
		t.Fatalf("deploy key: %+v %v", dep, err)
	}
	jobs, err := s.ray.Jobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{dep.SubmissionID}
	for _, j := range jobs {
		if j.SubmissionID != "" && j.SubmissionID != dep.SubmissionID && len(ids) < 5 {
			ids = append(ids, j.SubmissionID) // earlier executors, other systems' jobs
		}
	}
	listed := map[string]bool{}
	for _, j := range s.activeJobs(t) {
		listed[j.GetJobId()] = true
	}
	for _, id := range ids {
		if listed[id] {
			t.Errorf("Ray job %s listed as a deliberation", id)
		}
		if got := s.statusOf(t, s.status.url, id).GetStatus(); got != "not_found" {
			t.Errorf("got status %q for Ray job %s, want not_found", got, id)
		}
	}
}
