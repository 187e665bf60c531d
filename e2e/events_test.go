//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

func readBus(t *testing.T, url string) *natsbus.Bus {
	t.Helper()
	b, err := natsbus.Connect(natsbus.Config{URL: url}, "e2e-reader", slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// stored waits until the deliberation's events satisfy done, and returns them.
func stored(t *testing.T, b *natsbus.Bus, id string, done func([]natsbus.Stored) bool) []natsbus.Stored {
	t.Helper()
	var got []natsbus.Stored
	var err error
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		var evs []natsbus.Stored
		evs, err = b.Stored(context.Background(), id)
		if err == nil {
			got = evs
			if done(evs) {
				return evs
			}
		}
	}
	t.Fatalf("events of %s never complete; got %s (last read: %v)", id, kinds(got), err)
	return nil
}

func kinds(evs []natsbus.Stored) string {
	var ks []string
	for _, e := range evs {
		ks = append(ks, string(e.Kind()))
	}
	return strings.Join(ks, ",")
}

// terminals counts the terminal events.
func terminals(evs []natsbus.Stored) int {
	n := 0
	for _, e := range evs {
		if e.Kind().Terminal() {
			n++
		}
	}
	return n
}

// countKinds counts the events of each kind.
func countKinds(evs []natsbus.Stored) map[events.Kind]int {
	out := map[events.Kind]int{}
	for _, e := range evs {
		out[e.Kind()]++
	}
	return out
}

func hasTerminal(evs []natsbus.Stored) bool {
	for _, e := range evs {
		if e.Kind().Terminal() {
			return true
		}
	}
	return false
}

// compat reads the original-format agent responses about deliberation id.
func compat(t *testing.T, url, id string) []map[string]any {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	cons, err := js.OrderedConsumer(ctx, natsbus.DefaultResponsesStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for pending := info.NumPending; pending > 0; {
		msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		md, _ := msg.Metadata()
		pending = md.NumPending
		var env map[string]any
		if json.Unmarshal(msg.Data(), &env) == nil && env["correlation_id"] == id {
			env["_subject"] = msg.Subject()
			out = append(out, env)
		}
	}
	return out
}

func TestLifecycleEventsAndCompatibleResponses(t *testing.T) {
	t.Parallel()
	s := shared(t)
	stub, url := llm(t)
	for _, m := range []string{"m1", "m2", "m3"} {
		stub.Script(m, llmstub.Behavior{Delay: 500 * time.Millisecond})
	}
	req := request(uniqueTask(t), url, "m1", "m2", "m3")
	req.Constraints.Metadata = map[string]string{"task_id": "orig-task-7"}
	resp, err := s.submit(t, req, rpcevents.CallOptions{Traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetDeliberationId()
	if st := s.waitDone(t, s.status.url, id); st.GetStatus() != "completed" {
		t.Fatalf("got %q, want completed", st.GetStatus())
	}
	evs := stored(t, readBus(t, natsURL), id, hasTerminal)
	if got, want := kinds(evs), "submitted,started,agent_completed,agent_completed,agent_completed,completed"; got != want {
		t.Fatalf("got events %s, want %s", got, want)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		if seen[e.ID] || e.Subject != id || !strings.HasPrefix(e.Type, events.TypePrefix) || e.Traceparent == "" {
			t.Errorf("event %+v: want a unique id, subject %s, a lifecycle type and the traceparent", e.Event, id)
		}
		seen[e.ID] = true
	}
	var done events.TerminalData
	if err := json.Unmarshal(evs[5].Data, &done); err != nil || done.CompletedAgents != 3 || done.Status != "completed" {
		t.Errorf("got completed data %s, want 3 completed agents", evs[5].Data)
	}

	msgs := compat(t, natsURL, id)
	if len(msgs) != 3 {
		t.Fatalf("got %d compatible agent responses, want 3", len(msgs))
	}
	for _, m := range msgs {
		p, _ := m["payload"].(map[string]any)
		if m["_subject"] != "agent.response.completed" || m["event_type"] == nil || m["idempotency_key"] == nil || m["timestamp"] == nil {
			t.Errorf("got envelope %v, want agent.response.completed with event_type, idempotency_key, timestamp", m)
		}
		if p["task_id"] != "orig-task-7" || p["num_agents"] != float64(3) || p["success"] != true || p["agent_id"] == nil ||
			p["role"] != "architect" || p["duration_ms"] == nil || p["timestamp"] == nil {
			t.Errorf("got payload %v, want the consumers' fields with task_id from metadata and num_agents 3", p)
		}
		if prop, _ := p["proposal"].(map[string]any); prop["content"] == nil || prop["author_id"] == nil || prop["model"] == nil {
			t.Errorf("got proposal %v, want content, author_id and model", p["proposal"])
		}
	}
}

// With NATS down, execute refuses at once (UNAVAILABLE, fast: nothing is accepted that
// could not be stored) and is not ready; once NATS is back the caller's retry with its key
// is accepted and the deliberation runs to completion with every event stored once. The
// system has a NATS server of its own (and so an executor of its own on the head).
func TestNATSDownRefusesFastAndTheRetryCompletes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	port := testenv.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	srv, err := natslocal.Start(addr, filepath.Join(dir, "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Stop() })
	url := "nats://" + addr
	s := privateSystem(t, url, "LOG_LEVEL=warn")
	s.waitExecutorLive(t, 4*time.Minute)

	srv.Stop()
	_, llmURL := llm(t)
	req := request(uniqueTask(t), llmURL, "m1", "m2")
	opts := rpcevents.CallOptions{IdempotencyKey: "nats-down-" + req.TaskId}
	var resp pb.ExecuteDeliberationResponse
	for deadline := time.Now().Add(10 * time.Second); s.bus.Connected() && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond) // the functions see the server gone about as fast as this client
	}
	began := time.Now()
	err = s.client.Call(context.Background(), s.execute.url, rpcevents.TypeExecuteDeliberation, req, opts, &resp)
	took := time.Since(began)
	if !errors.Is(err, domain.ErrUnavailable) {
		t.Fatalf("submission with NATS down: got %v %v, want ErrUnavailable", &resp, err)
	}
	if took > 2*time.Second {
		t.Errorf("the refusal with NATS down took %s, want it fast", took)
	}
	t.Logf("NATS down: execute refused in %s: %v", took.Round(time.Millisecond), err)
	if r, err := http.Get(s.execute.url + "/readyz"); err != nil || r.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("execute readiness with NATS down: got %v %v, want 503", r, err)
	} else {
		r.Body.Close()
	}

	srv, err = natslocal.Start(addr, filepath.Join(dir, "nats"))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		err = s.client.Call(context.Background(), s.execute.url, rpcevents.TypeExecuteDeliberation, req, opts, &resp)
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || resp.GetStatus() != "submitted" {
		t.Fatalf("retry with NATS back: got %v %v, want submitted", &resp, err)
	}
	id := resp.GetDeliberationId()
	s.waitReconnected(t, id, 15*time.Second)
	if st := s.waitDone(t, s.status.url, id); st.GetStatus() != "completed" {
		t.Fatalf("got %q (%s), want completed", st.GetStatus(), st.GetErrorMessage())
	}
	evs := stored(t, s.bus, id, hasTerminal)
	if got, want := sortedKinds(evs), "agent_completed,agent_completed,completed,started,submitted"; got != want {
		t.Errorf("got events %s, want every event once: %s", got, want)
	}
	ids := map[string]int{}
	for _, e := range evs {
		ids[e.ID]++
		if ids[e.ID] > 1 {
			t.Errorf("event %s stored twice", e.ID)
		}
	}
}

func sortedKinds(evs []natsbus.Stored) string {
	ks := strings.Split(kinds(evs), ",")
	for i := range ks {
		for j := i + 1; j < len(ks); j++ {
			if ks[j] < ks[i] {
				ks[i], ks[j] = ks[j], ks[i]
			}
		}
	}
	return strings.Join(ks, ",")
}

func TestWatchDeliberation(t *testing.T) {
	t.Parallel()
	s := shared(t)
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url)
	stub, url := llm(t)
	stub.Script("slow", llmstub.Behavior{Delay: 3 * time.Second})
	ctx := context.Background()

	done, err := client.ExecuteDeliberation(ctx, request(uniqueTask(t), url, "m1"))
	if err != nil {
		t.Fatal(err)
	}
	waitGRPC(t, client, done.GetDeliberationId())
	stored(t, readBus(t, natsURL), done.GetDeliberationId(), hasTerminal)
	if got := watch(t, client, done.GetDeliberationId()); got != "submitted,started,agent_completed,completed" {
		t.Errorf("finished deliberation: got %s, want its whole history", got)
	}

	live, err := client.ExecuteDeliberation(ctx, request(uniqueTask(t), url, "slow", "slow"))
	if err != nil {
		t.Fatal(err)
	}
	if got := watch(t, client, live.GetDeliberationId()); got != "submitted,started,agent_completed,agent_completed,completed" {
		t.Errorf("live deliberation: got %s, want it streamed to its end", got)
	}

	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ws, err := client.WatchDeliberation(wctx, &pb.WatchDeliberationRequest{DeliberationId: "delib-never"})
	if err == nil {
		_, err = ws.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Errorf("got %v watching an unknown deliberation, want NotFound", err)
	}
}

func watch(t *testing.T, client pb.RayExecutorServiceClient, id string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ws, err := client.WatchDeliberation(ctx, &pb.WatchDeliberationRequest{DeliberationId: id})
	if err != nil {
		t.Fatal(err)
	}
	var ks []string
	for {
		r, err := ws.Recv()
		if errors.Is(err, io.EOF) {
			return strings.Join(ks, ",")
		}
		if err != nil {
			t.Fatalf("watch %s: %v after %v", id, err, ks)
		}
		if r.GetEvent().GetSubject() != id || r.GetEvent().GetDataJson() == "" {
			t.Errorf("got event %v", r.GetEvent())
		}
		ks = append(ks, r.GetEvent().GetKind())
	}
}

// ENABLE_NATS=false is a start-up error of every binary: NATS holds the records and the
// work queue. The binary exits at once, naming the setting.
func TestNATSDisabledIsAStartupError(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"execute", "status", "list", "ingress"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p := launch(t, name, "ENABLE_NATS=false", "EXECUTE_URL=http://127.0.0.1:1", "STATUS_URL=http://127.0.0.1:1",
				"LIST_URL=http://127.0.0.1:1")
			done := make(chan error, 1)
			go func() { done <- p.cmd.Wait() }()
			select {
			case err := <-done:
				if err == nil {
					t.Errorf("%s exited 0 with ENABLE_NATS=false, want a start-up error", name)
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("%s still runs 15 s after starting with ENABLE_NATS=false; output:\n%s", name, p.out.String())
			}
			if out := p.out.String(); !strings.Contains(out, "ENABLE_NATS=false is no longer supported") {
				t.Errorf("%s said %q, want it to name ENABLE_NATS=false as unsupported", name, out)
			}
		})
	}
}
