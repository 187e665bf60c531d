//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// largeDescription is a task description of exactly n bytes of valid UTF-8, like a backlog
// review's task-extraction prompt (a ceremony's reviews, ~70 KB) but larger, and full of
// what a shell, Ray's env var expansion, an HTML-escaping encoder or a format string could
// misread.
func largeDescription(n int, seed string) string {
	unit := "Review of " + seed + ": $HOME ${PATH} $(touch /tmp/pwned) `id` \"quoted\" 'single' \\ " +
		"<b>&amp;</b> {task_id} %s\r\n\tünïcødé 日本語 🚀 \x00\x01\u2028 end.\n"
	var b strings.Builder
	b.Grow(n)
	for b.Len()+len(unit) <= n {
		b.WriteString(unit)
	}
	b.WriteString(strings.Repeat("x", n-b.Len()))
	return b.String()
}

// A task description exactly at the default limit (256 KiB, past what an environment
// variable can carry) runs through the real ingress, execute, the work queue and the
// executor on Ray, and reaches the LLM byte for byte; one byte more is INVALID_ARGUMENT naming the field and the limit.
// Past the execute function's MAX_BODY_BYTES a request is refused naming that limit, by
// gRPC and by CloudEvent alike.
func TestLargePromptRunsAndOversizeIsRefused(t *testing.T) {
	t.Parallel()
	s := shared(t)
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url)
	stub, url := llm(t)
	ctx := context.Background()
	limit := domain.DefaultLimits().MaxDescriptionBytes
	if limit != 256<<10 {
		t.Fatalf("got a default description limit of %d, want 256 KiB", limit)
	}

	req := request(uniqueTask(t), url, "big-prompt")
	desc := largeDescription(limit, req.TaskId)
	req.TaskDescription = desc
	req.Constraints.Metadata = map[string]string{"task_type": "TASK_EXTRACTION", "note": "$HOME ${PATH}"}
	req.Agents[0].PromptTemplate = "Extract the tasks of {task_id} from: {task_description}"
	resp, err := client.ExecuteDeliberation(ctx, req)
	if err != nil {
		t.Fatalf("ExecuteDeliberation with a %d-byte description: %v", len(desc), err)
	}
	id := resp.GetDeliberationId()
	if st := waitGRPC(t, client, id); st.GetStatus() != "completed" {
		t.Fatalf("got status %q (%s), want completed", st.GetStatus(), st.GetErrorMessage())
	}
	calls := stub.Calls()
	if len(calls) != 1 || len(calls[0].Messages) != 2 {
		t.Fatalf("got %d LLM calls, want 1 with a system and a user message", len(calls))
	}
	system, user := calls[0].Messages[0].Content, calls[0].Messages[1].Content
	if want := "Extract the tasks of " + req.TaskId + " from: " + desc; system != want {
		t.Errorf("got a system prompt of %d bytes, want the template with the %d-byte description byte for byte", len(system), len(desc))
	}
	if !strings.HasPrefix(user, desc+"\n\n") || !strings.Contains(user, "note: $HOME ${PATH}") {
		t.Errorf("got a user prompt of %d bytes, want the description byte for byte, then the context lines", len(user))
	}

	// The record names the request by its digest; it does not carry the request (the work
	// message did, and the executor has acknowledged it).
	rec := s.record(t, id)
	raw, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	// (The outcome holds the stand-in's answer, which quotes the prompt's first line.)
	if len(raw) > 16<<10 || len(rec.RequestSHA256) != 32 {
		t.Errorf("got a record of %d bytes (%.300s), want the request's digest and the outcome, not the request", len(raw), raw)
	}
	t.Logf("record: %d bytes for a %d-byte description", len(raw), len(desc))

	// Refused, naming what was exceeded; none of it is accepted.
	refusedTask := uniqueTask(t) + "-refused"
	sized := func(n int) *pb.ExecuteDeliberationRequest {
		r := proto.Clone(req).(*pb.ExecuteDeliberationRequest)
		r.TaskId = refusedTask
		r.TaskDescription = largeDescription(n, refusedTask)
		return r
	}
	for _, tc := range []struct {
		name string
		req  *pb.ExecuteDeliberationRequest
		code codes.Code
		want string
	}{
		{"one byte over the description limit", sized(limit + 1), codes.InvalidArgument,
			fmt.Sprintf("task_description is %d bytes, more than the limit of %d", limit+1, limit)},
		{"over execute's MAX_BODY_BYTES", sized(3 << 20), codes.InvalidArgument,
			"larger than the limit of 2097152 bytes (MAX_BODY_BYTES)"},
		{"over the ingress's MAX_MESSAGE_BYTES", sized(5 << 20), codes.ResourceExhausted, "larger than max"},
	} {
		_, err := client.ExecuteDeliberation(ctx, tc.req)
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.want) {
			t.Errorf("%s: got %v, want %s naming %q", tc.name, err, tc.code, tc.want)
		}
	}
	if n := len(s.recordsForTask(t, refusedTask)); n != 0 {
		t.Errorf("got %d records for refused requests, want none", n)
	}

	// A CloudEvent over MAX_BODY_BYTES, announced (Content-Length) or not (chunked): 413
	// naming the limit.
	body := `{"task_id":"x","task_description":"` + strings.Repeat("y", 2<<20) + `"}`
	for _, chunked := range []bool{false, true} {
		var r io.Reader = strings.NewReader(body)
		if chunked {
			r = struct{ io.Reader }{r} // hides the length: sent chunked
		}
		hr, _ := http.NewRequest(http.MethodPost, s.execute.url, r)
		hr.Header.Set("Content-Type", "application/json")
		for k, v := range ceHeaders(rpcevents.TypeExecuteDeliberation) {
			hr.Header.Set(k, v)
		}
		hresp, err := http.DefaultClient.Do(hr)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(hresp.Body)
		hresp.Body.Close()
		var eb rpcevents.ErrorBody
		_ = json.Unmarshal(b, &eb)
		if hresp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(eb.Error.Message, "limit of 2097152 bytes (MAX_BODY_BYTES)") {
			t.Errorf("CloudEvent of %d bytes (chunked %v): got %d %s, want 413 naming the limit", len(body), chunked, hresp.StatusCode, b)
		}
	}
}

// quoted is n bytes of code-review text in which most characters need a JSON escape (quotes,
// backslashes, newlines): what a caller pasting JSON or source code sends.
func quoted(n int) string {
	unit := "{\"a\":\"\\\"\",\n\"b\":[\"\\n\",\"\t\"]}\n"
	return strings.Repeat(unit, n/len(unit)) + strings.Repeat("\"", n%len(unit))
}

// The largest request the default limits admit (a 256 KiB description, 32 agents with a
// 16 KiB prompt template each) is accepted and runs when its text is code full of quotes
// and newlines: its work message is then well over NATS's default max_payload (1 MiB), which
// the request must not meet as a refusal it cannot retry past, nor as a record left pending
// forever.
func TestLargestRequestWithinTheLimitsRuns(t *testing.T) {
	t.Parallel()
	s := shared(t)
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url)
	_, url := llm(t)
	limits := domain.DefaultLimits()
	models := make([]string, limits.MaxAgents)
	for i := range models {
		models[i] = fmt.Sprintf("m%d", i)
	}
	req := request(uniqueTask(t), url, models...)
	req.TaskDescription = quoted(limits.MaxDescriptionBytes)
	for _, a := range req.Agents {
		a.PromptTemplate = quoted(limits.MaxPromptTemplateBytes)
	}
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("request: %d agents, %d bytes as JSON (NATS's default max_payload is %d, execute's MAX_BODY_BYTES %d)",
		len(req.Agents), len(body), 1<<20, 2<<20)
	resp, err := client.ExecuteDeliberation(context.Background(), req)
	if err != nil {
		for _, r := range s.recordsForTask(t, req.TaskId) {
			if !r.Terminal() {
				t.Errorf("the refused request left record %s %s behind, with nothing queued to end it", r.ID, r.State)
			}
		}
		t.Fatalf("a request within every documented limit was refused: %v (%s)", err, status.Code(err))
	}
	if st := waitGRPC(t, client, resp.GetDeliberationId()); st.GetStatus() != "completed" || st.GetCompletedAgents() != int32(len(models)) {
		t.Fatalf("got %q with %d completed agents (%s), want completed with %d", st.GetStatus(), st.GetCompletedAgents(),
			st.GetErrorMessage(), len(models))
	}
}
