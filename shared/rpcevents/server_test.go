package rpcevents_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

const (
	serverSource      = "ray-executor/execute"
	executeReplyType  = "fleet.ray_executor.v1.ExecuteDeliberationResponse"
	statusReplyType   = "fleet.ray_executor.v1.GetDeliberationStatusResponse"
	testTraceparent   = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	validRequestJSON  = `{"task_id":"t-1","task_description":"do it","role":"dev","vllm_url":"http://v:8000","vllm_model":"m","agents":[{"id":"a","role":"dev","model":"m"}],"constraints":{"story_id":"s-1","metadata":{"task_type":"x"}}}`
	defaultTestSource = "test/client"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// seen records what the execute handler was called with.
type seen struct {
	mu          sync.Mutex
	calls       int
	req         *pb.ExecuteDeliberationRequest
	key         string
	traceparent string
	event       *event.Event
}

func (s *seen) snapshot() (int, *pb.ExecuteDeliberationRequest, string, string, *event.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls, s.req, s.key, s.traceparent, s.event
}

// startServer serves an rpcevents.Server handling ExecuteDeliberation (answered by fail
// when it is not nil, else echoed) and GetDeliberationStatus.
func startServer(t *testing.T, maxBody int64, fail error) (*httptest.Server, *seen) {
	t.Helper()
	s, rec := newServer(maxBody, fail)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return srv, rec
}

// newServer is startServer's server, not yet serving.
func newServer(maxBody int64, fail error) (*rpcevents.Server, *seen) {
	rec := &seen{}
	s := rpcevents.NewServer(serverSource, discard, maxBody)
	s.Handle(rpcevents.TypeExecuteDeliberation, rpcevents.Route(
		func() *pb.ExecuteDeliberationRequest { return &pb.ExecuteDeliberationRequest{} },
		func(ctx context.Context, r *rpcevents.Request, req *pb.ExecuteDeliberationRequest) (proto.Message, error) {
			rec.mu.Lock()
			rec.calls++
			rec.req = req
			rec.key = r.IdempotencyKey()
			rec.traceparent = r.Traceparent()
			rec.event = r.Event
			rec.mu.Unlock()
			if fail != nil {
				return nil, fail
			}
			return &pb.ExecuteDeliberationResponse{
				TaskId:         req.GetTaskId(),
				DeliberationId: "delib-1",
				Status:         "submitted",
				Duplicate:      true,
			}, nil
		}))
	s.Handle(rpcevents.TypeGetDeliberationStatus, rpcevents.Route(
		func() *pb.GetDeliberationStatusRequest { return &pb.GetDeliberationStatusRequest{} },
		func(ctx context.Context, r *rpcevents.Request, req *pb.GetDeliberationStatusRequest) (proto.Message, error) {
			return &pb.GetDeliberationStatusResponse{DeliberationId: req.GetDeliberationId(), Status: "running"}, nil
		}))
	return s, rec
}

// binaryRequest builds a binary-mode request event; headers override the defaults, and an
// empty value deletes a default.
func binaryRequest(t *testing.T, url, ceType, body string, headers map[string]string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	h := map[string]string{
		"ce-specversion": "1.0",
		"ce-id":          "evt-1",
		"ce-source":      defaultTestSource,
		"ce-type":        ceType,
		"Content-Type":   "application/json",
	}
	for k, v := range headers {
		h[k] = v
	}
	for k, v := range h {
		if v != "" {
			req.Header.Set(k, v)
		}
	}
	return req
}

// structuredRequest builds a structured-mode request event from its JSON envelope.
func structuredRequest(t *testing.T, url, envelope string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(envelope))
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	req.Header.Set("Content-Type", "application/cloudevents+json")
	return req
}

// envelope returns a structured-mode event carrying data (raw JSON) with the given
// attributes merged over the defaults; a nil value removes an attribute.
func envelope(t *testing.T, data string, attrs map[string]any) string {
	t.Helper()
	m := map[string]any{
		"specversion":     "1.0",
		"id":              "evt-1",
		"source":          defaultTestSource,
		"type":            rpcevents.TypeExecuteDeliberation,
		"datacontenttype": "application/json",
	}
	if data != "" {
		m["data"] = json.RawMessage(data)
	}
	for k, v := range attrs {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatalf("marshal envelope: %v", err)
	}
	return string(b)
}

func do(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp, body
}

// errorBody decodes and checks a JSON error answer.
func errorBody(t *testing.T, resp *http.Response, body []byte, wantStatus int, wantCode string) rpcevents.ErrorBody {
	t.Helper()
	if resp.StatusCode != wantStatus {
		t.Errorf("status: got %d, want %d (body %s)", resp.StatusCode, wantStatus, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type: got %q, want application/json", ct)
	}
	if ce := resp.Header.Get("ce-type"); ce != "" {
		t.Errorf("ce-type of an error answer: got %q, want none", ce)
	}
	var eb rpcevents.ErrorBody
	if err := json.Unmarshal(body, &eb); err != nil {
		t.Fatalf("error body %q: got %v, want {\"error\":{\"code\",\"message\"}}", body, err)
	}
	var raw map[string]map[string]any
	if err := json.Unmarshal(body, &raw); err != nil || len(raw) != 1 || raw["error"] == nil {
		t.Errorf("error body %s: got other top-level keys, want only \"error\"", body)
	}
	if eb.Error.Code != wantCode {
		t.Errorf("error.code: got %q, want %q", eb.Error.Code, wantCode)
	}
	if eb.Error.Message == "" {
		t.Errorf("error.message: got empty, want a message")
	}
	return eb
}

// checkOK checks a successful binary-mode reply and returns its data as a JSON object.
func checkOK(t *testing.T, resp *http.Response, body []byte, wantType string) map[string]any {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status: got %d, want 200 (body %s)", resp.StatusCode, body)
	}
	checks := []struct{ header, want string }{
		{"ce-specversion", "1.0"},
		{"ce-type", wantType},
		{"ce-source", serverSource},
		{"Content-Type", "application/json"},
	}
	for _, c := range checks {
		if got := resp.Header.Get(c.header); got != c.want {
			t.Errorf("reply %s: got %q, want %q", c.header, got, c.want)
		}
	}
	if resp.Header.Get("ce-id") == "" {
		t.Errorf("reply ce-id: got empty, want an id")
	}
	var data map[string]any
	if err := json.Unmarshal(body, &data); err != nil {
		t.Fatalf("reply data %q: got %v, want a JSON object", body, err)
	}
	return data
}

// checkStillServing sends a good request and expects a reply.
func checkStillServing(t *testing.T, url string) {
	t.Helper()
	resp, body := do(t, binaryRequest(t, url, rpcevents.TypeExecuteDeliberation, validRequestJSON, nil))
	if resp.StatusCode != http.StatusOK {
		t.Errorf("good request after a bad one: got status %d (%s), want 200", resp.StatusCode, body)
	}
}

func TestServerDecodesBothModes(t *testing.T) {
	tests := []struct {
		name string
		req  func(t *testing.T, url string) *http.Request
	}{
		{"binary", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, rpcevents.TypeExecuteDeliberation, validRequestJSON, map[string]string{
				"ce-traceparent":    testTraceparent,
				"ce-subject":        "task/t-1",
				"ce-idempotencykey": "key-1",
			})
		}},
		{"binary with charset", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, rpcevents.TypeExecuteDeliberation, validRequestJSON, map[string]string{
				"Content-Type":      "application/json; charset=utf-8",
				"ce-traceparent":    testTraceparent,
				"ce-subject":        "task/t-1",
				"ce-idempotencykey": "key-1",
			})
		}},
		{"structured", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, validRequestJSON, map[string]any{
				"traceparent":    testTraceparent,
				"subject":        "task/t-1",
				"idempotencykey": "key-1",
			}))
		}},
		{"structured with data_base64", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, "", map[string]any{
				"data_base64":    []byte(validRequestJSON), // encoding/json writes []byte as base64
				"traceparent":    testTraceparent,
				"subject":        "task/t-1",
				"idempotencykey": "key-1",
			}))
		}},
		{"structured with +json datacontenttype", func(t *testing.T, url string) *http.Request {
			// The SDK reads data as JSON only for application/json; other JSON media
			// types carry it as a string.
			return structuredRequest(t, url, envelope(t, "", map[string]any{
				"data":            validRequestJSON,
				"datacontenttype": "application/vnd.fleet+json",
				"traceparent":     testTraceparent,
				"subject":         "task/t-1",
				"idempotencykey":  "key-1",
			}))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, rec := startServer(t, 0, nil)
			resp, body := do(t, tt.req(t, srv.URL))
			data := checkOK(t, resp, body, executeReplyType)

			calls, req, key, tp, _ := rec.snapshot()
			if calls != 1 {
				t.Fatalf("handler calls: got %d, want 1", calls)
			}
			if req.GetTaskId() != "t-1" || req.GetVllmModel() != "m" || req.GetConstraints().GetStoryId() != "s-1" ||
				len(req.GetAgents()) != 1 || req.GetAgents()[0].GetId() != "a" || req.GetConstraints().GetMetadata()["task_type"] != "x" {
				t.Errorf("decoded request: got %v, want the fields sent", req)
			}
			if want := rpcevents.KeyFor(defaultTestSource, "evt-1", "key-1"); key != want {
				t.Errorf("IdempotencyKey(): got %q, want %q", key, want)
			}
			if tp != testTraceparent {
				t.Errorf("Traceparent(): got %q, want %q", tp, testTraceparent)
			}

			if got := resp.Header.Get("ce-traceparent"); got != testTraceparent {
				t.Errorf("reply ce-traceparent: got %q, want %q (echoed)", got, testTraceparent)
			}
			if got := resp.Header.Get("ce-subject"); got != "task/t-1" {
				t.Errorf("reply ce-subject: got %q, want %q (echoed)", got, "task/t-1")
			}
			want := map[string]any{"task_id": "t-1", "deliberation_id": "delib-1", "status": "submitted", "duplicate": true}
			for k, v := range want {
				if data[k] != v {
					t.Errorf("reply data[%q]: got %v, want %v (data %s)", k, data[k], v, body)
				}
			}
			for _, camel := range []string{"taskId", "deliberationId"} {
				if _, ok := data[camel]; ok {
					t.Errorf("reply data: got JSON name %q, want proto field names (data %s)", camel, body)
				}
			}
		})
	}
}

func TestServerReplyWithoutOptionalAttributes(t *testing.T) {
	srv, _ := startServer(t, 0, nil)
	resp, body := do(t, binaryRequest(t, srv.URL, rpcevents.TypeExecuteDeliberation, validRequestJSON, nil))
	checkOK(t, resp, body, executeReplyType)
	for _, h := range []string{"ce-traceparent", "ce-subject"} {
		if got := resp.Header.Get(h); got != "" {
			t.Errorf("reply %s: got %q, want none when the request had none", h, got)
		}
	}
}

func TestServerDispatchesByType(t *testing.T) {
	srv, rec := startServer(t, 0, nil)
	resp, body := do(t, binaryRequest(t, srv.URL, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"delib-9"}`, nil))
	data := checkOK(t, resp, body, statusReplyType)
	if data["deliberation_id"] != "delib-9" || data["status"] != "running" {
		t.Errorf("reply data: got %s, want deliberation_id delib-9 and status running", body)
	}
	if calls, _, _, _, _ := rec.snapshot(); calls != 0 {
		t.Errorf("execute handler calls: got %d, want 0", calls)
	}
}

func TestServerDataVariantsAccepted(t *testing.T) {
	tests := []struct {
		name        string
		body        string
		contentType string
		wantTaskID  string
	}{
		{"empty body decodes as {}", "", "application/json", ""},
		{"no content type", `{"task_id":"t"}`, "", "t"},
		{"unknown fields discarded", `{"task_id":"t","added_later":{"x":[1,2,3]}}`, "application/json", "t"},
		{"json names accepted", `{"taskId":"t","vllmModel":"m"}`, "application/json", "t"},
		{"vendor +json", `{"task_id":"t"}`, "application/vnd.example+json", "t"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, rec := startServer(t, 0, nil)
			resp, body := do(t, binaryRequest(t, srv.URL, rpcevents.TypeExecuteDeliberation, tt.body,
				map[string]string{"Content-Type": tt.contentType}))
			checkOK(t, resp, body, executeReplyType)
			calls, req, _, _, _ := rec.snapshot()
			if calls != 1 || req.GetTaskId() != tt.wantTaskID {
				t.Errorf("handler: got %d calls with task_id %q, want 1 call with %q", calls, req.GetTaskId(), tt.wantTaskID)
			}
		})
	}
}

func TestServerRejectsMethods(t *testing.T) {
	srv, rec := startServer(t, 0, nil)
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
		t.Run(method, func(t *testing.T) {
			req := binaryRequest(t, srv.URL, rpcevents.TypeExecuteDeliberation, validRequestJSON, nil)
			req.Method = method
			resp, body := do(t, req)
			errorBody(t, resp, body, http.StatusMethodNotAllowed, "method_not_allowed")
			if got := resp.Header.Get("Allow"); got != http.MethodPost {
				t.Errorf("Allow: got %q, want POST", got)
			}
		})
	}
	req := binaryRequest(t, srv.URL, rpcevents.TypeExecuteDeliberation, "", nil)
	req.Method = http.MethodHead
	if resp, _ := do(t, req); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("HEAD: got status %d, want 405", resp.StatusCode)
	}
	if calls, _, _, _, _ := rec.snapshot(); calls != 0 {
		t.Errorf("handler calls: got %d, want 0", calls)
	}
}

func TestServerRejectsUnknownType(t *testing.T) {
	srv, rec := startServer(t, 0, nil)
	for _, ceType := range []string{"fleet.ray_executor.v1.Nope", "com.example.other", rpcevents.TypeCancelDeliberation, strings.ToLower(rpcevents.TypeExecuteDeliberation)} {
		t.Run(ceType, func(t *testing.T) {
			resp, body := do(t, binaryRequest(t, srv.URL, ceType, validRequestJSON, nil))
			eb := errorBody(t, resp, body, http.StatusBadRequest, "invalid_argument")
			for _, want := range []string{ceType, rpcevents.TypeExecuteDeliberation + ", " + rpcevents.TypeGetDeliberationStatus} {
				if !strings.Contains(eb.Error.Message, want) {
					t.Errorf("error.message: got %q, want it to contain %q", eb.Error.Message, want)
				}
			}
		})
	}
	if calls, _, _, _, _ := rec.snapshot(); calls != 0 {
		t.Errorf("handler calls: got %d, want 0", calls)
	}
}

func TestServerRejectsBadEvents(t *testing.T) {
	typ := rpcevents.TypeExecuteDeliberation
	deep := func(n int) string { return `{"x":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}` }
	deepObj := func(n int) string { return `{"x":` + strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n) + `}` }
	tests := []struct {
		name    string
		req     func(t *testing.T, url string) *http.Request
		mention string // substring of error.message
	}{
		// not a CloudEvent at all, or missing required attributes
		{"plain JSON post", func(t *testing.T, url string) *http.Request {
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(validRequestJSON))
			req.Header.Set("Content-Type", "application/json")
			return req
		}, "CloudEvent"},
		{"binary without specversion", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, validRequestJSON, map[string]string{"ce-specversion": ""})
		}, "CloudEvent"},
		{"binary unknown specversion", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, validRequestJSON, map[string]string{"ce-specversion": "9.9"})
		}, "CloudEvent"},
		{"binary without id", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, validRequestJSON, map[string]string{"ce-id": ""})
		}, "id"},
		{"binary without source", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, validRequestJSON, map[string]string{"ce-source": ""})
		}, "source"},
		{"binary without type", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, "", validRequestJSON, nil)
		}, "type"},
		{"structured without id", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, validRequestJSON, map[string]any{"id": nil}))
		}, "id"},
		{"structured without source", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, validRequestJSON, map[string]any{"source": nil}))
		}, "source"},
		{"structured without type", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, validRequestJSON, map[string]any{"type": nil}))
		}, "type"},
		{"structured without specversion", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, validRequestJSON, map[string]any{"specversion": nil}))
		}, "CloudEvent"},
		{"structured envelope not JSON", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, `{"specversion":"1.0","id":`)
		}, "CloudEvent"},
		{"structured envelope empty", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, "")
		}, "CloudEvent"},

		// datacontenttype must be JSON
		{"binary text/plain", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, "task_id=t", map[string]string{"Content-Type": "text/plain"})
		}, "datacontenttype"},
		{"binary application/xml", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, "<task/>", map[string]string{"Content-Type": "application/xml"})
		}, "datacontenttype"},
		{"binary octet-stream", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, validRequestJSON, map[string]string{"Content-Type": "application/octet-stream"})
		}, "datacontenttype"},
		{"binary json lookalike", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, validRequestJSON, map[string]string{"Content-Type": "application/jsonx"})
		}, "datacontenttype"},
		{"binary unparsable media type", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, validRequestJSON, map[string]string{"Content-Type": "application/json; =bad"})
		}, "datacontenttype"},
		{"structured text/plain", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, `"task_id=t"`, map[string]any{"datacontenttype": "text/plain"}))
		}, "datacontenttype"},

		// data that is not the request message in protobuf JSON
		{"truncated JSON", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, `{"task_id":`, nil)
		}, "ExecuteDeliberationRequest"},
		{"JSON array", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, `[1,2]`, nil)
		}, "ExecuteDeliberationRequest"},
		{"wrong field type", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, `{"task_id":5}`, nil)
		}, "ExecuteDeliberationRequest"},
		{"trailing garbage", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, `{"task_id":"t"} {}`, nil)
		}, "ExecuteDeliberationRequest"},
		{"invalid UTF-8 in a string", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, "{\"task_id\":\"t\xff\xfe\"}", nil)
		}, "ExecuteDeliberationRequest"},
		{"invalid UTF-8 in a key", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, "{\"\xff\":\"t\"}", nil)
		}, "ExecuteDeliberationRequest"},
		{"binary bytes", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, "\x00\x01\x02\xff", nil)
		}, "ExecuteDeliberationRequest"},
		{"deeply nested arrays", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, deep(200000), nil)
		}, "ExecuteDeliberationRequest"},
		{"deeply nested objects", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, deepObj(100000), nil)
		}, "ExecuteDeliberationRequest"},
		{"deeply nested unclosed", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, typ, `{"x":`+strings.Repeat("[", 500000), nil)
		}, "ExecuteDeliberationRequest"},
		{"structured deeply nested data", func(t *testing.T, url string) *http.Request {
			// Built by hand: encoding/json refuses to marshal such depth.
			return structuredRequest(t, url, `{"specversion":"1.0","id":"e","source":"s","type":"`+typ+
				`","datacontenttype":"application/json","data":`+deep(100000)+`}`)
		}, ""},
		{"structured deeply nested data inside a string", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, "", map[string]any{
				"datacontenttype": "application/vnd.fleet+json", "data": deepObj(100000)}))
		}, "ExecuteDeliberationRequest"},
		{"structured invalid UTF-8 in data", func(t *testing.T, url string) *http.Request {
			req := structuredRequest(t, url, envelope(t, `{"task_id":"PLACEHOLDER"}`, nil))
			b, _ := io.ReadAll(req.Body)
			b = []byte(strings.Replace(string(b), "PLACEHOLDER", "t\xff", 1))
			req.Body = io.NopCloser(strings.NewReader(string(b)))
			req.ContentLength = int64(len(b))
			return req
		}, ""},
		{"structured data not an object", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, `"just a string"`, nil))
		}, "ExecuteDeliberationRequest"},
	}
	srv, rec := startServer(t, 4<<20, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, tt.req(t, srv.URL))
			eb := errorBody(t, resp, body, http.StatusBadRequest, "invalid_argument")
			if !strings.Contains(eb.Error.Message, tt.mention) {
				t.Errorf("error.message: got %q, want it to mention %q", eb.Error.Message, tt.mention)
			}
			checkStillServing(t, srv.URL)
		})
	}
	// Only the good follow-up requests reached the handler.
	if calls, _, _, _, _ := rec.snapshot(); calls != len(tests) {
		t.Errorf("handler calls: got %d, want %d (one per follow-up good request)", calls, len(tests))
	}
}

func TestServerBodyLimit(t *testing.T) {
	const limit = 1024
	// padded returns a valid request of exactly n bytes.
	padded := func(n int) string {
		const head, tail = `{"task_id":"t","task_description":"`, `"}`
		return head + strings.Repeat("x", n-len(head)-len(tail)) + tail
	}
	tests := []struct {
		name       string
		req        func(t *testing.T, url string) *http.Request
		wantStatus int
	}{
		{"binary at the limit", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, rpcevents.TypeExecuteDeliberation, padded(limit), nil)
		}, http.StatusOK},
		{"binary one byte over", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, rpcevents.TypeExecuteDeliberation, padded(limit+1), nil)
		}, http.StatusRequestEntityTooLarge},
		{"binary far over", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, rpcevents.TypeExecuteDeliberation, padded(8<<20), nil)
		}, http.StatusRequestEntityTooLarge},
		{"binary over, chunked", func(t *testing.T, url string) *http.Request {
			req := binaryRequest(t, url, rpcevents.TypeExecuteDeliberation, "", nil)
			req.Body = io.NopCloser(strings.NewReader(padded(4 * limit)))
			req.ContentLength = -1
			return req
		}, http.StatusRequestEntityTooLarge},
		{"structured over", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, padded(2*limit), nil))
		}, http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // each refusal costs net/http's half-second close delay
			srv, rec := startServer(t, limit, nil)
			resp, body := do(t, tt.req(t, srv.URL))
			if tt.wantStatus == http.StatusOK {
				checkOK(t, resp, body, executeReplyType)
				return
			}
			eb := errorBody(t, resp, body, tt.wantStatus, "too_large")
			if !strings.Contains(eb.Error.Message, fmt.Sprint(limit)) {
				t.Errorf("error.message: got %q, want it to name the limit %d", eb.Error.Message, limit)
			}
			if calls, _, _, _, _ := rec.snapshot(); calls != 0 {
				t.Errorf("handler calls: got %d, want 0", calls)
			}
			checkStillServing(t, srv.URL)
		})
	}
}

func TestServerDefaultBodyLimit(t *testing.T) {
	srv, _ := startServer(t, 0, nil) // 0 means DefaultMaxBodyBytes
	body := `{"task_description":"` + strings.Repeat("x", rpcevents.DefaultMaxBodyBytes) + `"}`
	resp, b := do(t, binaryRequest(t, srv.URL, rpcevents.TypeExecuteDeliberation, body, nil))
	errorBody(t, resp, b, http.StatusRequestEntityTooLarge, "too_large")
	if want := "limit of 2097152 bytes (MAX_BODY_BYTES)"; !strings.Contains(string(b), want) {
		t.Errorf("got %s, want the limit named: %q", b, want)
	}
	if rpcevents.DefaultMaxBodyBytes != 2<<20 {
		t.Errorf("DefaultMaxBodyBytes: got %d, want %d", rpcevents.DefaultMaxBodyBytes, 2<<20)
	}
}

func TestServerHandlerErrors(t *testing.T) {
	const secret = "dial tcp 10.0.0.7:5432: password=hunter2 rejected"
	tests := []struct {
		name        string
		err         error
		wantStatus  int
		wantCode    string
		wantMessage string
	}{
		{"invalid", fmt.Errorf("task_id is required: %w", domain.ErrInvalid), 400, "invalid_argument", "task_id is required: invalid argument"},
		{"validation error", &domain.ValidationError{Problems: []string{"role is required"}}, 400, "invalid_argument", "invalid request: role is required"},
		{"not found", fmt.Errorf("status: delib-x: %w", domain.ErrNotFound), 404, "not_found", "status: delib-x: not found"},
		{"conflict", fmt.Errorf("key reused: %w", domain.ErrConflict), 409, "conflict", "key reused: conflict"},
		{"already exists", fmt.Errorf("dup: %w", domain.ErrAlreadyExists), 409, "conflict", "dup: already exists"},
		{"unavailable", fmt.Errorf("ray down: %w", domain.ErrUnavailable), 503, "unavailable", "ray down: unavailable"},
		{"deadline", fmt.Errorf("ray slow: %w", domain.ErrDeadline), 504, "deadline_exceeded", "ray slow: deadline exceeded"},
		{"context deadline", fmt.Errorf("ray: %w", context.DeadlineExceeded), 504, "deadline_exceeded", "ray: context deadline exceeded"},
		{"unauthenticated", fmt.Errorf("ray 401: %w", domain.ErrUnauthenticated), 502, "upstream_unauthenticated", "ray 401: unauthenticated"},
		{"cancelled", fmt.Errorf("ray: %w", context.Canceled), 503, "cancelled", "ray: context canceled"},
		{"resource exhausted", fmt.Errorf("busy: %w", domain.ErrResourceExhausted), 429, "resource_exhausted", "busy: resource exhausted"},
		{"permission denied", fmt.Errorf("nope: %w", domain.ErrPermissionDenied), 403, "permission_denied", "nope: permission denied"},
		{"unknown", errors.New(secret), 500, "internal", "internal error"},
		{"unknown wrapping nothing known", fmt.Errorf("submit: %w", errors.New(secret)), 500, "internal", "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, rec := startServer(t, 0, tt.err)
			resp, body := do(t, binaryRequest(t, srv.URL, rpcevents.TypeExecuteDeliberation, validRequestJSON, nil))
			eb := errorBody(t, resp, body, tt.wantStatus, tt.wantCode)
			if eb.Error.Message != tt.wantMessage {
				t.Errorf("error.message: got %q, want %q", eb.Error.Message, tt.wantMessage)
			}
			if tt.wantStatus == 500 && strings.Contains(string(body), "hunter2") {
				t.Errorf("500 body: got %s, want the error text kept out of it", body)
			}
			if calls, _, _, _, _ := rec.snapshot(); calls != 1 {
				t.Errorf("handler calls: got %d, want 1", calls)
			}
		})
	}
}

func TestHTTPStatus(t *testing.T) {
	tests := []struct {
		err      error
		wantCode int
		wantName string
	}{
		{domain.ErrInvalid, 400, "invalid_argument"},
		{domain.ErrNotFound, 404, "not_found"},
		{domain.ErrConflict, 409, "conflict"},
		{domain.ErrAlreadyExists, 409, "conflict"},
		{domain.ErrUnavailable, 503, "unavailable"},
		{domain.ErrDeadline, 504, "deadline_exceeded"},
		{context.DeadlineExceeded, 504, "deadline_exceeded"},
		// Ray refusing our credential; a caller without one is refused 401 before any handler.
		{domain.ErrUnauthenticated, 502, "upstream_unauthenticated"},
		{domain.ErrPermissionDenied, 403, "permission_denied"},
		{domain.ErrResourceExhausted, 429, "resource_exhausted"},
		{context.Canceled, 503, "cancelled"},
		{errors.New("boom"), 500, "internal"},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", domain.ErrNotFound)), 404, "not_found"},
		{errors.Join(errors.New("x"), domain.ErrConflict), 409, "conflict"},
		// The first matching rule wins: invalid beats unavailable.
		{errors.Join(domain.ErrUnavailable, domain.ErrInvalid), 400, "invalid_argument"},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			code, name := rpcevents.HTTPStatus(tt.err)
			if code != tt.wantCode || name != tt.wantName {
				t.Errorf("HTTPStatus(%v): got %d %q, want %d %q", tt.err, code, name, tt.wantCode, tt.wantName)
			}
		})
	}
}

func TestServerTypes(t *testing.T) {
	s := rpcevents.NewServer("src", discard, 0)
	if got := s.Types(); len(got) != 0 {
		t.Errorf("Types() of a new server: got %v, want none", got)
	}
	noop := func(context.Context, *rpcevents.Request) (proto.Message, error) { return &pb.GetStatusResponse{}, nil }
	for _, typ := range []string{rpcevents.TypeGetStatus, rpcevents.TypeCancelDeliberation, rpcevents.TypeExecuteDeliberation, rpcevents.TypeGetStatus} {
		s.Handle(typ, noop)
	}
	want := []string{rpcevents.TypeCancelDeliberation, rpcevents.TypeExecuteDeliberation, rpcevents.TypeGetStatus}
	if got := s.Types(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("Types(): got %v, want %v", got, want)
	}
}

func TestReplyType(t *testing.T) {
	tests := []struct {
		msg  proto.Message
		want string
	}{
		{&pb.ExecuteDeliberationResponse{}, executeReplyType},
		{&pb.GetDeliberationStatusResponse{}, statusReplyType},
		{&pb.GetStatusResponse{}, "fleet.ray_executor.v1.GetStatusResponse"},
	}
	for _, tt := range tests {
		if got := rpcevents.ReplyType(tt.msg); got != tt.want {
			t.Errorf("ReplyType(%T): got %q, want %q", tt.msg, got, tt.want)
		}
	}
	for typ, want := range map[string]string{
		rpcevents.TypeExecuteDeliberation:              "fleet.ray_executor.v1.ExecuteDeliberation",
		rpcevents.TypeExecuteBacklogReviewDeliberation: "fleet.ray_executor.v1.ExecuteBacklogReviewDeliberation",
		rpcevents.TypeCancelDeliberation:               "fleet.ray_executor.v1.CancelDeliberation",
		rpcevents.TypeGetDeliberationStatus:            "fleet.ray_executor.v1.GetDeliberationStatus",
		rpcevents.TypeGetActiveJobs:                    "fleet.ray_executor.v1.GetActiveJobs",
		rpcevents.TypeGetStatus:                        "fleet.ray_executor.v1.GetStatus",
	} {
		if typ != want {
			t.Errorf("request type: got %q, want %q", typ, want)
		}
	}
}

// newEvent builds a request event for IdempotencyKey and Traceparent.
func newEvent(t *testing.T, source, id string, ext map[string]any) *rpcevents.Request {
	t.Helper()
	ev := event.New()
	ev.SetSource(source)
	ev.SetID(id)
	ev.SetType(rpcevents.TypeExecuteDeliberation)
	for k, v := range ext {
		ev.SetExtension(k, v)
	}
	if err := ev.Validate(); err != nil {
		t.Fatalf("event: %v", err)
	}
	return &rpcevents.Request{Event: &ev, Base: discard}
}

func TestRequestIdempotencyKey(t *testing.T) {
	key := func(source, id string, ext map[string]any) string {
		return newEvent(t, source, id, ext).IdempotencyKey()
	}
	withKey := func(k string) map[string]any { return map[string]any{rpcevents.ExtIdempotencyKey: k} }
	tests := []struct {
		name      string
		a, b      string
		wantEqual bool
	}{
		{"extension wins over source and id",
			key("src-a", "1", withKey("order-42")), key("src-b", "2", withKey("order-42")), true},
		{"extension equals its KeyFor",
			key("src-a", "1", withKey("order-42")), rpcevents.KeyFor("other", "other", "order-42"), true},
		{"different extensions differ",
			key("src", "1", withKey("order-42")), key("src", "1", withKey("order-43")), false},
		{"redelivery names the same key",
			key("src", "1", nil), key("src", "1", nil), true},
		{"different sources, same id",
			key("ray-executor/ingress", "1", nil), key("ray-executor/nats-bridge", "1", nil), false},
		{"same source, different ids",
			key("src", "1", nil), key("src", "2", nil), false},
		{"source and id boundary cannot be shifted",
			key("src/a", "b", nil), key("src", "a/b", nil), false},
		{"extension never collides with source+id",
			key("s", "i", withKey("s\x00i")), key("s", "i", nil), false},
		{"extension never collides with the event form of a key",
			key("x", "y", withKey("event\x00s\x00i")), key("s", "i", nil), false},
		{"empty extension falls back to source+id",
			key("src", "1", withKey("")), key("src", "1", nil), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a == tt.b; got != tt.wantEqual {
				t.Errorf("keys %q and %q: got equal=%v, want %v", tt.a, tt.b, got, tt.wantEqual)
			}
		})
	}
	if got, want := key("src", "1", nil), rpcevents.KeyFor("src", "1", ""); got != want {
		t.Errorf("IdempotencyKey(): got %q, want KeyFor = %q", got, want)
	}
}

func TestRequestTraceparent(t *testing.T) {
	if got := newEvent(t, "s", "1", map[string]any{rpcevents.ExtTraceparent: testTraceparent}).Traceparent(); got != testTraceparent {
		t.Errorf("Traceparent(): got %q, want %q", got, testTraceparent)
	}
	if got := newEvent(t, "s", "1", nil).Traceparent(); got != "" {
		t.Errorf("Traceparent() without the extension: got %q, want empty", got)
	}
}
