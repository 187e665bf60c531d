package execute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// largestRequest is the largest request the default limits admit, built to be as large as
// possible on the wire too: every limited field full, of quotes (two bytes each in JSON),
// and the metadata as many two-byte keys as fit (the most protobuf and JSON framing).
func largestRequest() *pb.ExecuteDeliberationRequest {
	l := domain.DefaultLimits()
	meta := map[string]string{}
	for i := 0; len(meta)*2 < l.MaxMetadataBytes; i++ {
		meta[string([]byte{byte('!' + i/94), byte('!' + i%94)})] = ""
	}
	req := &pb.ExecuteDeliberationRequest{
		TaskId: "task-largest", TaskDescription: strings.Repeat(`"`, l.MaxDescriptionBytes), Role: "architect",
		Constraints: &pb.TaskConstraints{StoryId: "story-1", PlanId: "plan-1", TimeoutSeconds: 60, Metadata: meta},
		VllmUrl:     "http://127.0.0.1:8000", VllmModel: "m",
	}
	for i := range l.MaxAgents {
		req.Agents = append(req.Agents, &pb.Agent{Id: fmt.Sprintf("agent-%02d", i), Role: "dev", Model: "m",
			PromptTemplate: strings.Repeat(`"`, l.MaxPromptTemplateBytes)})
	}
	return req
}

// The largest request the default limits admit fits every hop with room to spare: the
// execute function's body (as protobuf from the ingress, and as protobuf JSON from an
// HTTP caller), the package Ray stores, and a submission that carries none of it.
func TestTheLargestRequestFitsEveryHop(t *testing.T) {
	cfg, err := LoadConfig(func(k string) string { return map[string]string{"LLM_ENDPOINT_ALLOWLIST": "http://127.0.0.1"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxBodyBytes != 2<<20 {
		t.Fatalf("got MAX_BODY_BYTES default %d, want %d", cfg.MaxBodyBytes, 2<<20)
	}
	req := largestRequest()
	if d := deliberationRequest(req); domain.Normalize(&d, cfg.Limits) != nil {
		t.Fatalf("the largest request: got %v, want it valid", domain.Normalize(&d, cfg.Limits))
	}
	pbSize := proto.Size(req)
	js, _ := protojson.Marshal(req)
	t.Logf("largest request: %d bytes as protobuf, %d as protobuf JSON; MAX_BODY_BYTES %d", pbSize, len(js), cfg.MaxBodyBytes)
	if int64(pbSize)*2 > cfg.MaxBodyBytes {
		t.Errorf("got %d bytes of protobuf, want at most half of MAX_BODY_BYTES (%d)", pbSize, cfg.MaxBodyBytes)
	}
	if int64(len(js)) > cfg.MaxBodyBytes {
		t.Errorf("got %d bytes of protobuf JSON, want at most MAX_BODY_BYTES (%d)", len(js), cfg.MaxBodyBytes)
	}

	for _, asProtobuf := range []bool{true, false} {
		t.Run(fmt.Sprintf("protobuf=%v", asProtobuf), func(t *testing.T) {
			var pkgs []ray.Package
			var sub ray.SubmitRequest
			svc := &Service{Limits: cfg.Limits, WorkingDirs: fakeWD{}, Jobs: &fakeJobs{JobFn: notFound,
				PackageFn: func(_ context.Context, p ray.Package) error { pkgs = append(pkgs, p); return nil },
				SubmitFn:  func(_ context.Context, r ray.SubmitRequest) (string, error) { sub = r; return r.SubmissionID, nil }}}
			srv := httptest.NewServer(NewHandler(svc, "test", cfg.MaxBodyBytes, quiet))
			defer srv.Close()
			c := &rpcevents.Client{Source: "test", Protobuf: asProtobuf}
			var resp pb.ExecuteDeliberationResponse
			if err := c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, req, rpcevents.CallOptions{}, &resp); err != nil {
				t.Fatalf("got %v, want the largest request accepted", err)
			}
			if len(pkgs) != 1 || len(pkgs[0].Data) > int(cfg.MaxBodyBytes) {
				t.Fatalf("got packages %d, want one of at most %d bytes", len(pkgs), cfg.MaxBodyBytes)
			}
			wire, _ := json.Marshal(sub)
			t.Logf("request package %d bytes, submission %d bytes", len(pkgs[0].Data), len(wire))
			if len(wire) > 4<<10 {
				t.Errorf("got a submission of %d bytes, want a small one (the request is in the package)", len(wire))
			}

			// One byte over the description's limit is refused, naming the field and limit.
			over := proto.Clone(req).(*pb.ExecuteDeliberationRequest)
			over.TaskDescription += "x"
			err := c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, over, rpcevents.CallOptions{}, &resp)
			var se *rpcevents.StatusError
			if !errors.As(err, &se) || se.HTTPStatus != http.StatusBadRequest ||
				!strings.Contains(se.Message, "task_description is 262145 bytes, more than the limit of 262144") {
				t.Errorf("one byte over: got %v, want 400 naming task_description and its limit", err)
			}
		})
	}
}
