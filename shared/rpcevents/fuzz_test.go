package rpcevents_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// FuzzServer sends arbitrary bodies and CloudEvent attributes to a function's server: every
// answer is 200, 400 or 413 (never 5xx, never a panic), and the server keeps serving.
func FuzzServer(f *testing.F) {
	f.Add("1.0", "id", "src", rpcevents.TypeExecuteDeliberation, "application/json", []byte(`{"task_id":"t"}`))
	f.Add("1.0", "id", "src", rpcevents.TypeExecuteDeliberation, "application/protobuf", []byte{0x0a, 0x01, 'x'})
	f.Add("0.3", "", "", "", "", []byte(`{`))
	f.Add("", "id", "src", "x", "application/cloudevents+json", []byte(`{"specversion":"1.0","id":"1","source":"s","type":"`+rpcevents.TypeExecuteDeliberation+`","data":{"task_id":"t"}}`))
	f.Add("1.0", "i%ZZd", "%20", rpcevents.TypeExecuteDeliberation, "application/json; charset=utf-8", []byte("[[[[[[[[[[[["))
	srv := rpcevents.NewServer("fuzz", slog.New(slog.NewTextHandler(io.Discard, nil)), 1<<16)
	srv.Handle(rpcevents.TypeExecuteDeliberation, rpcevents.Route(
		func() *pb.ExecuteDeliberationRequest { return &pb.ExecuteDeliberationRequest{} },
		func(_ context.Context, r *rpcevents.Request, req *pb.ExecuteDeliberationRequest) (proto.Message, error) {
			_ = r.IdempotencyKey()
			_ = r.Traceparent()
			return &pb.ExecuteDeliberationResponse{TaskId: req.GetTaskId()}, nil
		}))
	f.Fuzz(func(t *testing.T, specversion, id, source, typ, contentType string, body []byte) {
		req := httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body))
		for k, v := range map[string]string{"Ce-Specversion": specversion, "Ce-Id": id, "Ce-Source": source,
			"Ce-Type": typ, "Content-Type": contentType} {
			if v != "" {
				req.Header[k] = []string{v}
			}
		}
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		switch w.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("got %d %s", w.Code, w.Body)
		}
	})
}
