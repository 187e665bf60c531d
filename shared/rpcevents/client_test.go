package rpcevents_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

var allSentinels = []error{
	domain.ErrInvalid, domain.ErrNotFound, domain.ErrAlreadyExists, domain.ErrConflict,
	domain.ErrUnavailable, domain.ErrUnauthenticated, domain.ErrDeadline,
	domain.ErrResourceExhausted, domain.ErrPermissionDenied,
}

func sampleRequest() *pb.ExecuteDeliberationRequest {
	return &pb.ExecuteDeliberationRequest{
		TaskId:          "t-1",
		TaskDescription: "do it",
		Role:            "dev",
		VllmUrl:         "http://v:8000",
		VllmModel:       "m",
		Constraints:     &pb.TaskConstraints{StoryId: "s-1", Metadata: map[string]string{"task_type": "x"}},
		Agents:          []*pb.Agent{{Id: "a", Role: "dev", Model: "m"}},
	}
}

// checkSentinel fails unless err wraps want (nil: no sentinel) and no other sentinel.
func checkSentinel(t *testing.T, err error, want error) {
	t.Helper()
	for _, s := range allSentinels {
		if got := errors.Is(err, s); got != (s == want) {
			t.Errorf("errors.Is(%v, %v): got %v, want %v", err, s, got, s == want)
		}
	}
}

func TestClientRoundTrip(t *testing.T) {
	srv, rec := startServer(t, 0, nil)
	c := &rpcevents.Client{HTTP: srv.Client(), Source: "ray-executor/ingress"}
	var resp pb.ExecuteDeliberationResponse
	err := c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, sampleRequest(),
		rpcevents.CallOptions{ID: "call-1", Subject: "task/t-1", IdempotencyKey: "order-42", Traceparent: testTraceparent}, &resp)
	if err != nil {
		t.Fatalf("Call: got %v, want nil", err)
	}
	if resp.GetTaskId() != "t-1" || resp.GetDeliberationId() != "delib-1" || resp.GetStatus() != "submitted" || !resp.GetDuplicate() {
		t.Errorf("reply: got %v, want task_id t-1, deliberation_id delib-1, status submitted, duplicate", &resp)
	}
	calls, req, key, tp, ev := rec.snapshot()
	if calls != 1 {
		t.Fatalf("handler calls: got %d, want 1", calls)
	}
	if !proto.Equal(req, sampleRequest()) {
		t.Errorf("request at the function: got %v, want %v", req, sampleRequest())
	}
	if want := rpcevents.KeyFor("", "", "order-42"); key != want {
		t.Errorf("IdempotencyKey at the function: got %q, want %q", key, want)
	}
	if tp != testTraceparent {
		t.Errorf("Traceparent at the function: got %q, want %q", tp, testTraceparent)
	}
	if ev.ID() != "call-1" || ev.Source() != "ray-executor/ingress" || ev.Subject() != "task/t-1" || ev.Type() != rpcevents.TypeExecuteDeliberation {
		t.Errorf("event at the function: got id %q source %q subject %q type %q, want call-1, ray-executor/ingress, task/t-1, %s",
			ev.ID(), ev.Source(), ev.Subject(), ev.Type(), rpcevents.TypeExecuteDeliberation)
	}
}

func TestClientSendsBinaryModeWithProtoNames(t *testing.T) {
	var mu sync.Mutex
	var header http.Header
	var body string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		header, body = r.Header.Clone(), string(b)
		mu.Unlock()
		w.Header().Set("ce-specversion", "1.0")
		w.Header().Set("ce-id", "r-1")
		w.Header().Set("ce-source", "stub")
		w.Header().Set("ce-type", executeReplyType)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"deliberation_id":"delib-2","unknown_new_field":1}`)
	}))
	t.Cleanup(srv.Close)
	c := &rpcevents.Client{Source: "src"} // nil HTTP: the default client
	var resp pb.ExecuteDeliberationResponse
	if err := c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, sampleRequest(),
		rpcevents.CallOptions{IdempotencyKey: "k", Traceparent: testTraceparent, Subject: "sub"}, &resp); err != nil {
		t.Fatalf("Call: got %v, want nil", err)
	}
	if resp.GetDeliberationId() != "delib-2" {
		t.Errorf("reply deliberation_id: got %q, want delib-2 (unknown reply fields ignored)", resp.GetDeliberationId())
	}
	mu.Lock()
	defer mu.Unlock()
	for h, want := range map[string]string{
		"ce-specversion":    "1.0",
		"ce-type":           rpcevents.TypeExecuteDeliberation,
		"ce-source":         "src",
		"ce-subject":        "sub",
		"ce-idempotencykey": "k",
		"ce-traceparent":    testTraceparent,
		"Content-Type":      "application/json",
	} {
		if got := header.Get(h); got != want {
			t.Errorf("request header %s: got %q, want %q", h, got, want)
		}
	}
	if header.Get("ce-id") == "" {
		t.Errorf("request ce-id: got empty, want a generated id")
	}
	if !strings.Contains(body, `"task_id":"t-1"`) || strings.Contains(body, "taskId") {
		t.Errorf("request body: got %s, want proto field names", body)
	}
}

func TestClientGeneratesDistinctIDs(t *testing.T) {
	var mu sync.Mutex
	var ids []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ids = append(ids, r.Header.Get("ce-id"))
		mu.Unlock()
		w.WriteHeader(http.StatusNotFound)
	}))
	t.Cleanup(srv.Close)
	c := &rpcevents.Client{HTTP: srv.Client(), Source: "src"}
	for i := 0; i < 3; i++ {
		var resp pb.ExecuteDeliberationResponse
		_ = c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, sampleRequest(), rpcevents.CallOptions{}, &resp)
	}
	_ = c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, sampleRequest(), rpcevents.CallOptions{ID: "fixed"}, &pb.ExecuteDeliberationResponse{})
	mu.Lock()
	defer mu.Unlock()
	if len(ids) != 4 {
		t.Fatalf("requests: got %d, want 4", len(ids))
	}
	if ids[0] == "" || ids[0] == ids[1] || ids[1] == ids[2] || ids[0] == ids[2] {
		t.Errorf("generated ids: got %q, want three distinct non-empty ids", ids[:3])
	}
	if ids[3] != "fixed" {
		t.Errorf("given id: got %q, want %q", ids[3], "fixed")
	}
}

func TestClientMapsFunctionErrors(t *testing.T) {
	tests := []struct {
		name        string
		fail        error
		wantStatus  int
		wantCode    string
		wantMessage string
		want        error // sentinel; nil: none
	}{
		{"invalid", fmt.Errorf("task_id is required: %w", domain.ErrInvalid), 400, "invalid_argument", "task_id is required: invalid argument", domain.ErrInvalid},
		{"not found", fmt.Errorf("delib-x: %w", domain.ErrNotFound), 404, "not_found", "delib-x: not found", domain.ErrNotFound},
		{"conflict", fmt.Errorf("key reused: %w", domain.ErrConflict), 409, "conflict", "key reused: conflict", domain.ErrConflict},
		{"already exists is a conflict", fmt.Errorf("dup: %w", domain.ErrAlreadyExists), 409, "conflict", "dup: already exists", domain.ErrConflict},
		{"unavailable", fmt.Errorf("ray down: %w", domain.ErrUnavailable), 503, "unavailable", "ray down: unavailable", domain.ErrUnavailable},
		{"deadline", fmt.Errorf("ray slow: %w", domain.ErrDeadline), 504, "deadline_exceeded", "ray slow: deadline exceeded", domain.ErrDeadline},
		{"upstream unauthenticated is unavailable", fmt.Errorf("ray 401: %w", domain.ErrUnauthenticated), 502, "upstream_unauthenticated", "ray 401: unauthenticated", domain.ErrUnavailable},
		{"cancelled is unavailable", fmt.Errorf("x: %w", context.Canceled), 503, "cancelled", "x: context canceled", domain.ErrUnavailable},
		{"resource exhausted", fmt.Errorf("busy: %w", domain.ErrResourceExhausted), 429, "resource_exhausted", "busy: resource exhausted", domain.ErrResourceExhausted},
		{"permission denied", fmt.Errorf("read-only caller: %w", domain.ErrPermissionDenied), 403, "permission_denied", "read-only caller: permission denied", domain.ErrPermissionDenied},
		{"internal", errors.New("password=hunter2"), 500, "internal", "internal error", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, _ := startServer(t, 0, tt.fail)
			c := &rpcevents.Client{HTTP: srv.Client(), Source: "src"}
			var resp pb.ExecuteDeliberationResponse
			err := c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, sampleRequest(), rpcevents.CallOptions{}, &resp)
			if err == nil {
				t.Fatalf("Call: got nil, want an error")
			}
			checkSentinel(t, err, tt.want)
			var se *rpcevents.StatusError
			if !errors.As(err, &se) {
				t.Fatalf("errors.As(*StatusError): got false for %T %v, want true", err, err)
			}
			if se.HTTPStatus != tt.wantStatus || se.Code != tt.wantCode || se.Message != tt.wantMessage {
				t.Errorf("StatusError: got %d %q %q, want %d %q %q", se.HTTPStatus, se.Code, se.Message, tt.wantStatus, tt.wantCode, tt.wantMessage)
			}
			if !strings.Contains(err.Error(), tt.wantMessage) {
				t.Errorf("Error(): got %q, want it to carry %q", err.Error(), tt.wantMessage)
			}
		})
	}
}

func TestClientMapsRequestTooLarge(t *testing.T) {
	srv, _ := startServer(t, 64, nil)
	c := &rpcevents.Client{HTTP: srv.Client(), Source: "src"}
	err := c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, sampleRequest(), rpcevents.CallOptions{}, &pb.ExecuteDeliberationResponse{})
	checkSentinel(t, err, domain.ErrInvalid)
	var se *rpcevents.StatusError
	if !errors.As(err, &se) || se.HTTPStatus != http.StatusRequestEntityTooLarge || se.Code != "too_large" {
		t.Errorf("Call with an oversized request: got %v, want a 413 too_large StatusError", err)
	}
}

func TestClientMapsRawStatuses(t *testing.T) {
	tests := []struct {
		status      int
		body        string
		want        error
		wantMessage string
	}{
		{400, `{"error":{"code":"invalid_argument","message":"bad field"}}`, domain.ErrInvalid, "bad field"},
		{413, "", domain.ErrInvalid, "function answered 413 Request Entity Too Large"},
		{404, "<html>not here</html>", domain.ErrNotFound, "function answered 404 Not Found"},
		{409, `{"error":{}}`, domain.ErrConflict, "function answered 409 Conflict"},
		{429, "slow down", domain.ErrResourceExhausted, "function answered 429 Too Many Requests"},
		{502, "bad gateway", domain.ErrUnavailable, "function answered 502 Bad Gateway"},
		{503, `{"error":{"code":"unavailable","message":"ray down"}}`, domain.ErrUnavailable, "ray down"},
		{504, "", domain.ErrDeadline, "function answered 504 Gateway Timeout"},
		{507, "", domain.ErrUnavailable, "function answered 507 Insufficient Storage"},
		{500, "", nil, "function answered 500 Internal Server Error"},
		{401, "", domain.ErrUnauthenticated, "function answered 401 Unauthorized"},
		{401, `{"error":{"code":"unauthenticated","message":"no credential"}}`, domain.ErrUnauthenticated, "no credential"},
		{403, "", domain.ErrPermissionDenied, "function answered 403 Forbidden"},
		{405, "", nil, "function answered 405 Method Not Allowed"},
		{206, "", nil, "function answered 206 Partial Content"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.status, " ", tt.wantMessage), func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			t.Cleanup(srv.Close)
			c := &rpcevents.Client{HTTP: srv.Client(), Source: "src"}
			err := c.Call(context.Background(), srv.URL, rpcevents.TypeGetStatus, &pb.GetStatusRequest{}, rpcevents.CallOptions{}, &pb.GetStatusResponse{})
			if err == nil {
				t.Fatalf("Call: got nil, want an error")
			}
			checkSentinel(t, err, tt.want)
			var se *rpcevents.StatusError
			if !errors.As(err, &se) || se.HTTPStatus != tt.status {
				t.Fatalf("Call: got %T %v, want a StatusError with status %d", err, err, tt.status)
			}
			if se.Message != tt.wantMessage {
				t.Errorf("StatusError.Message: got %q, want %q", se.Message, tt.wantMessage)
			}
		})
	}
}

// 202 is a command's "accepted, no reply": success, and the response is left untouched.
func TestClientAcceptsNoReply(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(srv.Close)
	c := &rpcevents.Client{HTTP: srv.Client(), Source: "src"}
	resp := &pb.GetStatusResponse{Status: "untouched"}
	if err := c.Call(context.Background(), srv.URL, rpcevents.TypeReconcile, &pb.GetStatusRequest{}, rpcevents.CallOptions{}, resp); err != nil {
		t.Fatalf("Call: got %v, want nil for 202", err)
	}
	if resp.GetStatus() != "untouched" {
		t.Errorf("got %q, want the response left as it was", resp.GetStatus())
	}
}

func TestClientUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there any more

	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	tests := []struct {
		name string
		url  string
	}{
		{"connection refused", "http://" + addr + "/"},
		{"closed server", closed.URL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &rpcevents.Client{HTTP: &http.Client{Timeout: 10 * time.Second}, Source: "src"}
			err := c.Call(context.Background(), tt.url, rpcevents.TypeGetStatus, &pb.GetStatusRequest{}, rpcevents.CallOptions{}, &pb.GetStatusResponse{})
			checkSentinel(t, err, domain.ErrUnavailable)
			if err != nil && !strings.Contains(err.Error(), "unreachable") {
				t.Errorf("Error(): got %q, want it to say unreachable", err)
			}
		})
	}
}

func TestClientBadURL(t *testing.T) {
	c := &rpcevents.Client{Source: "src"}
	for _, url := range []string{"http://[::1", "://no-scheme", "ftp\x7f://x"} {
		err := c.Call(context.Background(), url, rpcevents.TypeGetStatus, &pb.GetStatusRequest{}, rpcevents.CallOptions{}, &pb.GetStatusResponse{})
		if err == nil {
			t.Errorf("Call(%q): got nil, want an error", url)
		}
	}
}

// slowServer answers only when the client goes away or after a long time.
func slowServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Reading the whole body lets net/http notice the client hanging up.
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestClientDeadline(t *testing.T) {
	srv := slowServer(t)
	tests := []struct {
		name   string
		client *http.Client
		ctx    func() (context.Context, context.CancelFunc)
	}{
		{"context deadline", srv.Client(), func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}},
		{"http client timeout", &http.Client{Timeout: 100 * time.Millisecond}, func() (context.Context, context.CancelFunc) {
			return context.WithCancel(context.Background())
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			c := &rpcevents.Client{HTTP: tt.client, Source: "src"}
			start := time.Now()
			err := c.Call(ctx, srv.URL, rpcevents.TypeGetStatus, &pb.GetStatusRequest{}, rpcevents.CallOptions{}, &pb.GetStatusResponse{})
			if elapsed := time.Since(start); elapsed > 5*time.Second {
				t.Errorf("Call took %v, want it to give up after about 100ms", elapsed)
			}
			checkSentinel(t, err, domain.ErrDeadline)
		})
	}
}

func TestClientCancelled(t *testing.T) {
	srv := slowServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	c := &rpcevents.Client{HTTP: srv.Client(), Source: "src"}
	err := c.Call(ctx, srv.URL, rpcevents.TypeGetStatus, &pb.GetStatusRequest{}, rpcevents.CallOptions{}, &pb.GetStatusResponse{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Call with a cancelled ctx: got %v, want it to wrap context.Canceled", err)
	}
	checkSentinel(t, err, nil)
}

func TestClientBadReplies(t *testing.T) {
	ceHeaders := func(w http.ResponseWriter, ceType string) {
		w.Header().Set("ce-specversion", "1.0")
		w.Header().Set("ce-id", "r-1")
		w.Header().Set("ce-source", "stub")
		w.Header().Set("ce-type", ceType)
		w.Header().Set("Content-Type", "application/json")
	}
	tests := []struct {
		name    string
		handler http.HandlerFunc
		mention string
	}{
		{"not a CloudEvent", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"deliberation_id":"x"}`)
		}, "not a CloudEvent"},
		{"wrong reply type", func(w http.ResponseWriter, r *http.Request) {
			ceHeaders(w, statusReplyType)
			io.WriteString(w, `{}`)
		}, "reply type"},
		{"request type echoed as reply type", func(w http.ResponseWriter, r *http.Request) {
			ceHeaders(w, rpcevents.TypeExecuteDeliberation)
			io.WriteString(w, `{}`)
		}, "reply type"},
		{"reply data not JSON", func(w http.ResponseWriter, r *http.Request) {
			ceHeaders(w, executeReplyType)
			io.WriteString(w, `<xml/>`)
		}, "reply data"},
		{"reply data wrong field type", func(w http.ResponseWriter, r *http.Request) {
			ceHeaders(w, executeReplyType)
			io.WriteString(w, `{"duplicate":"yes"}`)
		}, "reply data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			c := &rpcevents.Client{HTTP: srv.Client(), Source: "src"}
			err := c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, sampleRequest(), rpcevents.CallOptions{}, &pb.ExecuteDeliberationResponse{})
			if err == nil {
				t.Fatalf("Call: got nil, want an error")
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("Error(): got %q, want it to mention %q", err, tt.mention)
			}
		})
	}
}

func TestClientWrongReplyTypeFromServer(t *testing.T) {
	// The function answers GetDeliberationStatus; the caller expects an execute reply.
	srv, _ := startServer(t, 0, nil)
	c := &rpcevents.Client{HTTP: srv.Client(), Source: "src"}
	var resp pb.ExecuteDeliberationResponse
	err := c.Call(context.Background(), srv.URL, rpcevents.TypeGetDeliberationStatus, &pb.GetDeliberationStatusRequest{DeliberationId: "d"},
		rpcevents.CallOptions{}, &resp)
	if err == nil {
		t.Fatalf("Call: got nil, want a reply type error")
	}
	for _, want := range []string{statusReplyType, executeReplyType} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Error(): got %q, want it to name %q", err, want)
		}
	}
	checkSentinel(t, err, nil)
}

func TestStatusErrorMessage(t *testing.T) {
	tests := []struct {
		err      *rpcevents.StatusError
		want     string
		sentinel error
	}{
		{&rpcevents.StatusError{HTTPStatus: 418}, "function answered 418", nil},
		{&rpcevents.StatusError{HTTPStatus: 400, Message: "role is required"}, "role is required", domain.ErrInvalid},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error(): got %q, want %q", got, tt.want)
		}
		if got := errors.Unwrap(tt.err); got != tt.sentinel {
			t.Errorf("Unwrap() of a hand-made StatusError: got %v, want %v (from its HTTP status)", got, tt.sentinel)
		}
	}
}
