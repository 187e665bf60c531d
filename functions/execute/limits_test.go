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
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/executor"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/records"
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
// HTTP caller) and the work message NATS stores for the executor.
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
			// The whole request travels in its work message: on a NATS server whose
			// max_payload takes it, the largest request is queued whole.
			w := newWorldOn(t, natsWithMaxPayload(t, 4<<20))
			w.svc.Limits = cfg.Limits
			srv := httptest.NewServer(NewHandler(w.svc, "test", cfg.MaxBodyBytes, quiet))
			defer srv.Close()
			c := &rpcevents.Client{Source: "test", Protobuf: asProtobuf}
			var resp pb.ExecuteDeliberationResponse
			if err := c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, req, rpcevents.CallOptions{}, &resp); err != nil {
				t.Fatalf("got %v, want the largest request accepted", err)
			}
			msgs := w.workMessages(t)
			if len(msgs) != 1 || msgs[0].Subject != records.WorkSubjectPrefix+resp.GetDeliberationId() {
				t.Fatalf("got %d work messages, want the request's", len(msgs))
			}
			var pr executor.PayloadRequest
			if err := json.Unmarshal(msgs[0].Data, &pr); err != nil || pr.TaskDescription != req.GetTaskDescription() || len(pr.Agents) != len(req.GetAgents()) {
				t.Fatalf("the work message does not carry the request whole: %v", err)
			}
			t.Logf("work message %d bytes", len(msgs[0].Data))

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

// On a NATS server with NATS's default max_payload (1 MiB) the largest request's work message
// does not fit. It is refused before anything is stored, as a request error naming the
// limit: never a 503 a retry cannot get past, nor a pending record nothing will ever run.
func TestAWorkMessageOverMaxPayloadLeavesNothingBehind(t *testing.T) {
	cfg, err := LoadConfig(func(k string) string { return map[string]string{"LLM_ENDPOINT_ALLOWLIST": "http://127.0.0.1"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	w := newWorldOn(t, natsWithMaxPayload(t, 1<<20))
	w.svc.Limits = cfg.Limits
	max := w.bus.Conn().MaxPayload()
	if max != 1<<20 {
		t.Fatalf("the test server's max_payload is %d, want 1 MiB", max)
	}
	r := deliberationRequest(largestRequest())
	_, err = w.svc.Execute(context.Background(), r, "big", "", domain.Caller{}, quiet)
	if !errors.Is(err, domain.ErrInvalid) || !strings.Contains(err.Error(), "max_payload") ||
		!strings.Contains(err.Error(), fmt.Sprint(max)) {
		t.Fatalf("got %v, want ErrInvalid naming max_payload and %d", err, max)
	}
	if _, _, err := w.store.Get(context.Background(), domain.DeliberationIDForKey("big")); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("a refused request left a record: %v", err)
	}
	if n := len(w.active(t)); n != 0 {
		t.Errorf("a refused request left %d active entries", n)
	}
	if n := len(w.workMessages(t)); n != 0 {
		t.Errorf("a refused request queued %d messages", n)
	}
	// Within max_payload, the same kind of request is accepted.
	r.TaskDescription = r.TaskDescription[:1000]
	for i := range r.Agents {
		r.Agents[i].PromptTemplate = "{task_description}"
	}
	if _, err := w.svc.Execute(context.Background(), r, "small", "", domain.Caller{}, quiet); err != nil {
		t.Errorf("a smaller request: %v", err)
	}
}

// natsWithMaxPayload starts an embedded NATS server with JetStream whose max_payload is
// maxPayload, and returns a bus on it with the event streams provisioned.
func natsWithMaxPayload(t *testing.T, maxPayload int32) *natsbus.Bus {
	t.Helper()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, MaxPayload: maxPayload})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS did not start")
	}
	bus, err := natsbus.Connect(natsbus.Config{URL: srv.ClientURL()}, "test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bus.Close)
	for deadline := time.Now().Add(10 * time.Second); !bus.Connected() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if err := bus.Provision(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	return bus
}
