package rexctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
)

// ingressDouble answers the CLI's calls in process and records what it was sent: these are
// the CLI's unit tests (e2e/rexctl_test.go runs it against the real ingress).
type ingressDouble struct {
	pb.UnimplementedRayExecutorServiceServer
	mu      sync.Mutex
	md      metadata.MD
	submit  *pb.ExecuteDeliberationRequest
	backlog *pb.ExecuteBacklogReviewDeliberationRequest
	cancel  *pb.CancelDeliberationRequest
	err     error
	status  *pb.GetDeliberationStatusResponse
	health  *pb.GetStatusResponse
	jobs    *pb.GetActiveJobsResponse
	events  []*pb.LifecycleEvent
}

func (d *ingressDouble) record(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.md, _ = metadata.FromIncomingContext(ctx)
	return d.err
}

func (d *ingressDouble) ExecuteDeliberation(ctx context.Context, req *pb.ExecuteDeliberationRequest) (*pb.ExecuteDeliberationResponse, error) {
	if err := d.record(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.submit = req
	d.mu.Unlock()
	return &pb.ExecuteDeliberationResponse{TaskId: req.GetTaskId(), DeliberationId: "delib-1", Status: "submitted"}, nil
}

func (d *ingressDouble) ExecuteBacklogReviewDeliberation(ctx context.Context, req *pb.ExecuteBacklogReviewDeliberationRequest) (*pb.ExecuteDeliberationResponse, error) {
	if err := d.record(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.backlog = req
	d.mu.Unlock()
	return &pb.ExecuteDeliberationResponse{TaskId: req.GetTaskId(), DeliberationId: "delib-b", Status: "submitted", Duplicate: true}, nil
}

func (d *ingressDouble) GetDeliberationStatus(ctx context.Context, _ *pb.GetDeliberationStatusRequest) (*pb.GetDeliberationStatusResponse, error) {
	if err := d.record(ctx); err != nil {
		return nil, err
	}
	return d.status, nil
}

func (d *ingressDouble) GetStatus(ctx context.Context, _ *pb.GetStatusRequest) (*pb.GetStatusResponse, error) {
	if err := d.record(ctx); err != nil {
		return nil, err
	}
	return d.health, nil
}

func (d *ingressDouble) GetActiveJobs(ctx context.Context, _ *pb.GetActiveJobsRequest) (*pb.GetActiveJobsResponse, error) {
	if err := d.record(ctx); err != nil {
		return nil, err
	}
	return d.jobs, nil
}

func (d *ingressDouble) CancelDeliberation(ctx context.Context, req *pb.CancelDeliberationRequest) (*pb.CancelDeliberationResponse, error) {
	if err := d.record(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.cancel = req
	d.mu.Unlock()
	return &pb.CancelDeliberationResponse{DeliberationId: req.GetDeliberationId(), Status: "cancelled"}, nil
}

func (d *ingressDouble) WatchDeliberation(req *pb.WatchDeliberationRequest, stream pb.RayExecutorService_WatchDeliberationServer) error {
	if err := d.record(stream.Context()); err != nil {
		return err
	}
	for _, ev := range d.events {
		if err := stream.Send(&pb.WatchDeliberationResponse{Event: ev}); err != nil {
			return err
		}
	}
	return nil
}

func serve(t *testing.T, d *ingressDouble) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterRayExecutorServiceServer(srv, d)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// run is one CLI invocation; it returns the exit code, stdout and stderr.
func run(t *testing.T, env map[string]string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	a := &App{
		Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errOut,
		Getenv: func(k string) string { return env[k] },
		Now:    func() time.Time { return time.Date(2026, 1, 2, 3, 4, 10, 0, time.UTC) },
	}
	code := Main(context.Background(), a, args)
	return code, out.String(), errOut.String()
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const testToken = "s3cr3t-token-0123456789abcdef"

func TestSubmitFromFlagsSendsTokenAndIdempotencyKey(t *testing.T) {
	d := &ingressDouble{}
	addr := serve(t, d)
	tokenFile := writeFile(t, "token", testToken+"\n")
	code, out, errOut := run(t, map[string]string{EnvAddress: addr, EnvTokenFile: tokenFile}, "",
		"submit", "--task-id", "t1", "-d", "Pick a database", "--role", "architect", "--vllm-url", "http://llm", "--model", "m",
		"--agents", "2", "--agent", "id=x", "--idempotency-key", "key-1", "--timeout-seconds", "60", "--metadata", "task_type=X")
	if code != ExitUsage || out != "" || !strings.Contains(errOut, "--agent or --agents, not both") || d.submit != nil {
		t.Fatalf("--agent with --agents: code %d, stdout %q, stderr %q; want %d naming both, nothing sent", code, out, errOut, ExitUsage)
	}
	code, out, errOut = run(t, map[string]string{EnvAddress: addr, EnvTokenFile: tokenFile}, "",
		"submit", "--task-id", "t1", "-d", "Pick a database", "--role", "architect", "--vllm-url", "http://llm", "--model", "m",
		"--agents", "2", "--idempotency-key", "key-1", "--timeout-seconds", "60", "--metadata", "task_type=X")
	if code != ExitOK {
		t.Fatalf("code %d, stderr %q", code, errOut)
	}
	if out != "submitted deliberation delib-1 (task t1)\n" {
		t.Errorf("stdout %q", out)
	}
	want := &pb.ExecuteDeliberationRequest{TaskId: "t1", TaskDescription: "Pick a database", Role: "architect", VllmUrl: "http://llm", VllmModel: "m",
		Constraints: &pb.TaskConstraints{TimeoutSeconds: 60, Metadata: map[string]string{"task_type": "X"}},
		Agents:      []*pb.Agent{{Id: "agent-1", Role: "architect", Model: "m"}, {Id: "agent-2", Role: "architect", Model: "m"}}}
	if !proto.Equal(d.submit, want) {
		t.Errorf("sent %v\nwant %v", d.submit, want)
	}
	if got := d.md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+testToken {
		t.Errorf("authorization metadata %q", got)
	}
	if got := d.md.Get("idempotency-key"); len(got) != 1 || got[0] != "key-1" {
		t.Errorf("idempotency-key metadata %q", got)
	}
	if strings.Contains(out+errOut, testToken) {
		t.Error("the token was printed")
	}
}

func TestRequestFileJSONAndYAMLAreTheSame(t *testing.T) {
	js := writeFile(t, "req.json", `{"task_id":"t1","task_description":"Shard the users table","role":"architect",
		"constraints":{"story_id":"s1","timeout_seconds":60,"metadata":{"k":"v"}},
		"vllm_url":"http://llm","vllm_model":"m","agents":[{"id":"a1","role":"architect","model":"m1"},{"id":"a2","role":"dba","model":"m2","vllm_url":"http://other"}]}`)
	ym := writeFile(t, "req.yaml", `task_id: t1
task_description: Shard the users table
role: architect
constraints:
  story_id: s1
  timeout_seconds: 60
  metadata: {k: v}
vllm_url: http://llm
vllm_model: m
agents:
  - {id: a1, role: architect, model: m1}
  - {id: a2, role: dba, model: m2, vllm_url: "http://other"}
`)
	d := &ingressDouble{}
	addr := serve(t, d)
	var sent []*pb.ExecuteDeliberationRequest
	for _, f := range []string{js, ym} {
		if code, _, errOut := run(t, map[string]string{EnvAddress: addr}, "", "submit", "-f", f); code != ExitOK {
			t.Fatalf("%s: code %d %s", f, code, errOut)
		}
		sent = append(sent, d.submit)
	}
	if !proto.Equal(sent[0], sent[1]) || sent[0].GetAgents()[1].GetVllmUrl() != "http://other" || sent[0].GetConstraints().GetMetadata()["k"] != "v" {
		t.Fatalf("JSON and YAML differ or lost fields:\n%v\n%v", sent[0], sent[1])
	}
	// From standard input, YAML detected by its content; flags override the file.
	yamlText, _ := os.ReadFile(ym)
	if code, _, errOut := run(t, map[string]string{EnvAddress: addr}, string(yamlText), "submit", "-f", "-", "--task-id", "t2",
		"--story-id", "s9", "--agent", "id=z,model=mz,url=http://z"); code != ExitOK {
		t.Fatalf("stdin: code %d %s", code, errOut)
	}
	if got := d.submit; got.GetTaskId() != "t2" || got.GetConstraints().GetStoryId() != "s9" || got.GetConstraints().GetTimeoutSeconds() != 60 ||
		len(got.GetAgents()) != 1 || !proto.Equal(got.GetAgents()[0], &pb.Agent{Id: "z", Role: "architect", Model: "mz", VllmUrl: "http://z"}) {
		t.Fatalf("flags over the file: %v", got)
	}
	// A backlog review takes the same file (no plan_id) through its own RPC.
	if code, out, errOut := run(t, map[string]string{EnvAddress: addr}, "", "submit", "-f", ym, "--kind", "backlog-review"); code != ExitOK ||
		d.backlog.GetConstraints().GetStoryId() != "s1" || len(d.backlog.GetAgents()) != 2 || !strings.Contains(out, "already submitted") {
		t.Fatalf("backlog review: code %d %q %q %v", code, out, errOut, d.backlog)
	}
}

func TestRequestRefusalsAreUsageErrors(t *testing.T) {
	big := writeFile(t, "big.json", `{"task_id":"`+strings.Repeat("x", maxRequestFileBytes)+`"}`)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown field", []string{"-f", writeFile(t, "u.json", `{"task_id":"t","nonsense":1}`)}, "nonsense"},
		{"bad yaml", []string{"-f", writeFile(t, "b.yaml", "task_id: [unclosed")}, "not valid YAML"},
		{"wrong type", []string{"-f", writeFile(t, "w.yaml", "constraints: {timeout_seconds: soon}")}, "timeoutSeconds"},
		{"too large", []string{"-f", big}, "larger than"},
		{"missing file", []string{"-f", filepath.Join(t.TempDir(), "none.json")}, "no such file"},
		{"no agents", []string{"--task-id", "t"}, "no agents"},
		{"agent without id", []string{"--agent", "role=r"}, "no id"},
		{"agent unknown key", []string{"--agent", "id=a,colour=red"}, `unknown key "colour"`},
		{"agent not key=value", []string{"--agent", "id=a,b"}, "not key=value"},
		{"metadata", []string{"--agents", "1", "--metadata", "novalue"}, "key=value"},
		{"kind", []string{"--agents", "1", "--kind", "other"}, "--kind"},
		{"backlog plan", []string{"--agents", "1", "--kind", "backlog-review", "--plan-id", "p"}, "plan_id"},
		{"key", []string{"--agents", "1", "--idempotency-key", "a\nb"}, "printable ASCII"},
		{"two descriptions", []string{"--agents", "1", "-d", "x", "--description-file", "y"}, "not both"},
		{"unknown flag", []string{"--colour"}, "unknown flag"},
		{"argument", []string{"extra"}, "unexpected argument"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, errOut := run(t, map[string]string{EnvAddress: "127.0.0.1:1"}, "", append([]string{"submit"}, c.args...)...)
			if code != ExitUsage || !strings.Contains(errOut, c.want) {
				t.Fatalf("code %d stderr %q; want %d mentioning %q", code, errOut, ExitUsage, c.want)
			}
		})
	}
}

func TestExitCodeOfEveryGRPCCode(t *testing.T) {
	want := map[codes.Code]int{
		codes.OK: ExitOK, codes.Canceled: ExitInterrupted, codes.Unknown: ExitOther, codes.InvalidArgument: ExitUsage,
		codes.DeadlineExceeded: ExitUnavailable, codes.NotFound: ExitNotFound, codes.AlreadyExists: ExitUsage,
		codes.PermissionDenied: ExitDenied, codes.ResourceExhausted: ExitUnavailable, codes.FailedPrecondition: ExitOther,
		codes.Aborted: ExitUnavailable, codes.OutOfRange: ExitUsage, codes.Unimplemented: ExitOther, codes.Internal: ExitOther,
		codes.Unavailable: ExitUnavailable, codes.DataLoss: ExitOther, codes.Unauthenticated: ExitDenied,
	}
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		w, ok := want[c]
		if !ok {
			t.Fatalf("no expectation for %s", c)
		}
		err := status.Error(c, "x")
		if c == codes.OK {
			err = nil
		}
		if got := ExitCode(err); got != w {
			t.Errorf("%s: exit %d, want %d", c, got, w)
		}
	}
	for err, w := range map[error]int{
		usagef("x"): ExitUsage, &endedError{status: "failed"}: ExitFailed, &endedError{status: "cancelled"}: ExitCancelled,
		&notFoundError{}: ExitNotFound, &unhealthyError{}: ExitUnavailable, errInterrupted: ExitInterrupted,
		context.DeadlineExceeded: ExitUnavailable, os.ErrNotExist: ExitOther,
	} {
		if got := ExitCode(err); got != w {
			t.Errorf("%T %v: exit %d, want %d", err, err, got, w)
		}
	}
}

// Errors from the ingress reach the exit code through a real gRPC round trip, and the token
// is never printed, not even when the server quotes it.
func TestServerErrorsMapToExitCodesWithoutTheToken(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{status.Error(codes.Unauthenticated, "unknown token "+testToken), ExitDenied},
		{status.Error(codes.PermissionDenied, "read-only caller"), ExitDenied},
		{status.Error(codes.NotFound, "no such deliberation"), ExitNotFound},
		{status.Error(codes.InvalidArgument, "task_id: required"), ExitUsage},
		{status.Error(codes.ResourceExhausted, "over the limit"), ExitUnavailable},
		{status.Error(codes.Internal, "boom"), ExitOther},
	} {
		d := &ingressDouble{err: c.err}
		addr := serve(t, d)
		for _, args := range [][]string{{"cancel", "delib-1"}, {"status", "delib-1"}, {"list"}, {"health"}, {"watch", "delib-1"}} {
			code, out, errOut := run(t, map[string]string{EnvAddress: addr, EnvToken: testToken}, "", args...)
			if code != c.want {
				t.Errorf("%v from %v: exit %d, want %d (%s)", args, c.err, code, c.want, errOut)
			}
			if strings.Contains(out+errOut, testToken) {
				t.Errorf("%v: the token was printed: %q", args, out+errOut)
			}
			if !strings.HasPrefix(errOut, "rexctl: "+strings.ToUpper(snake(status.Code(c.err).String()))) {
				t.Errorf("%v: stderr %q does not name the code", args, errOut)
			}
		}
	}
	// Nothing listens: UNAVAILABLE, retry later.
	if code, _, errOut := run(t, map[string]string{EnvAddress: "127.0.0.1:1"}, "", "list", "--timeout", "2s"); code != ExitUnavailable {
		t.Errorf("no ingress: exit %d, want %d (%s)", code, ExitUnavailable, errOut)
	}
}

func TestTokenOptionsNeverEchoTheToken(t *testing.T) {
	bad := "abc def-" + testToken
	for _, c := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{nil, []string{"--token", bad, "list"}, "--token: the token has a character at byte 4"},
		{map[string]string{EnvToken: bad}, []string{"list"}, EnvToken + ": the token has a character at byte 4"},
		{nil, []string{"--token-file", writeFile(t, "tok", bad), "list"}, "--token-file"},
		{nil, []string{"--token-file", writeFile(t, "empty", "\n"), "list"}, "the token is empty"},
		{nil, []string{"--token", testToken, "--token-file", "x", "list"}, "not both"},
	} {
		c.env = map[string]string{EnvAddress: "127.0.0.1:1", EnvToken: c.env[EnvToken]}
		code, out, errOut := run(t, c.env, "", c.args...)
		if code != ExitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d stderr %q; want %d with %q", c.args, code, errOut, ExitUsage, c.want)
		}
		if strings.Contains(out+errOut, testToken) || strings.Contains(out+errOut, "abc def") {
			t.Errorf("%v: the token was printed: %q", c.args, errOut)
		}
	}
	if s := (bearer{token: testToken}); strings.Contains(strings.Join([]string{
		fmtAll(s), fmtAll(s.token)}, ""), testToken) {
		t.Error("formatting the credential prints the token")
	}
	if code, _, errOut := run(t, map[string]string{EnvAddress: "10.0.0.1:1", EnvToken: testToken}, "", "list", "--timeout", "1ms"); code == ExitOK ||
		!strings.Contains(errOut, "without TLS") || strings.Contains(errOut, testToken) {
		t.Errorf("a token in the clear to another host: exit %d, stderr %q; want a warning", code, errOut)
	}
}

func TestTLSOptionRefusals(t *testing.T) {
	notPEM := writeFile(t, "ca.pem", "not a certificate")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ca-file", notPEM}, "no PEM certificate"},
		{[]string{"--cert-file", notPEM}, "both --cert-file and --key-file"},
		{[]string{"--cert-file", notPEM, "--key-file", notPEM}, "client certificate"},
		{[]string{"--ca-file", filepath.Join(t.TempDir(), "none")}, "--ca-file"},
	} {
		code, _, errOut := run(t, map[string]string{EnvAddress: "127.0.0.1:1"}, "", append(c.args, "list")...)
		if code != ExitUsage || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d stderr %q; want %d with %q", c.args, code, errOut, ExitUsage, c.want)
		}
	}
}

func TestJSONOutputIsProtobufJSON(t *testing.T) {
	st := &pb.GetDeliberationStatusResponse{DeliberationId: "delib-1", Status: "completed", TaskId: "t1", TotalAgents: 2, CompletedAgents: 2,
		StartTime: timestamppb.New(time.Unix(100, 0)), EndTime: timestamppb.New(time.Unix(103, 0)),
		AgentResults: []*pb.AgentResult{{AgentId: "a1", Status: "completed", Score: 0.5, Proposal: "use \x1b[31mpostgres"}},
		Result:       &pb.DeliberationResult{AgentId: "a1", Proposal: "use \x1b[31mpostgres", Score: 0.5}}
	d := &ingressDouble{status: st, jobs: &pb.GetActiveJobsResponse{Jobs: []*pb.JobInfo{{JobId: "delib-2", Status: "RUNNING", TaskId: "t2", TotalAgents: 3}}},
		health: &pb.GetStatusResponse{Status: "degraded", Version: "abc1234", Components: []*pb.ComponentHealth{{Name: "ray", Status: "unhealthy", Message: "down"}}}}
	addr := serve(t, d)
	env := map[string]string{EnvAddress: addr}
	for _, c := range []struct {
		args []string
		into proto.Message
		want proto.Message
		code int
	}{
		{[]string{"status", "delib-1"}, &pb.GetDeliberationStatusResponse{}, st, ExitOK},
		{[]string{"list"}, &pb.GetActiveJobsResponse{}, d.jobs, ExitOK},
		{[]string{"health"}, &pb.GetStatusResponse{}, d.health, ExitUnavailable},
		{[]string{"cancel", "delib-3", "--reason", "no longer needed"}, &pb.CancelDeliberationResponse{}, &pb.CancelDeliberationResponse{DeliberationId: "delib-3", Status: "cancelled"}, ExitOK},
	} {
		code, out, errOut := run(t, env, "", append(c.args, "-o", "json")...)
		if code != c.code {
			t.Fatalf("%v: exit %d (%s)", c.args, code, errOut)
		}
		if err := protojson.Unmarshal([]byte(out), c.into); err != nil || !proto.Equal(c.into, c.want) {
			t.Errorf("%v: %v\n%s", c.args, err, out)
		}
		if !strings.Contains(out, `"`) || strings.Contains(out, "deliberationId") {
			t.Errorf("%v: want proto field names: %s", c.args, out)
		}
	}
	if d.cancel.GetReason() != "no longer needed" {
		t.Errorf("cancel reason %q", d.cancel.GetReason())
	}
	// Text: the proposal's escape sequence does not reach the terminal.
	code, out, _ := run(t, env, "", "status", "delib-1")
	if code != ExitOK || strings.Contains(out, "\x1b") || !strings.Contains(out, "use  [31mpostgres") || !strings.Contains(out, "ended         1970-01-01T00:01:43Z (after 3s)") {
		t.Errorf("status text: %q", out)
	}
	d.status = &pb.GetDeliberationStatusResponse{Status: "not_found"}
	if code, _, errOut := run(t, env, "", "status", "delib-x"); code != ExitNotFound || !strings.Contains(errOut, "delib-x not found") {
		t.Errorf("not_found: exit %d %q", code, errOut)
	}
	if code, out, _ := run(t, env, "", "list"); code != ExitOK || !strings.Contains(out, "delib-2") || !strings.Contains(out, "running") {
		t.Errorf("list text: %q", out)
	}
}

func event(kind string, sec int64, data string) *pb.LifecycleEvent {
	return &pb.LifecycleEvent{Kind: kind, Subject: "delib-1", Type: "fleet.ray_executor.v1.deliberation." + kind,
		Time: timestamppb.New(time.Date(2026, 1, 2, 3, 4, int(sec), 0, time.UTC)), DataJson: data}
}

func history(outcome string) []*pb.LifecycleEvent {
	evs := []*pb.LifecycleEvent{
		event("submitted", 0, `{"task_id":"t1","num_agents":3}`),
		event("started", 1, `{"task_id":"t1","num_agents":3}`),
		event("agent_completed", 3, `{"agent_index":0,"agent_id":"a1","model":"m1","score":0.8,"tokens":12,"duration_ms":2000}`),
		event("agent_failed", 4, `{"agent_index":2,"agent_id":"a3","model":"m3","error":"timed out\u001b[2J","error_type":"timeout","duration_ms":3000}`),
	}
	switch outcome {
	case "failed":
		evs = append(evs, event("failed", 6, `{"status":"failed","completed_agents":0,"failed_agents":3,"error":"every agent failed","error_type":"all_agents_failed"}`))
	case "cancelled":
		evs = append(evs, event("cancelled", 6, `{"status":"cancelled","reason":"operator"}`))
	case "completed":
		evs = append(evs, event("agent_completed", 5, `{"agent_index":1,"agent_id":"a2","model":"m2","score":0.5,"duration_ms":4000}`),
			event("completed", 6, `{"status":"completed","completed_agents":2,"failed_agents":1,"duration_ms":5000}`))
	}
	return evs
}

func TestWatchPlainLinesAndOutcomes(t *testing.T) {
	for _, c := range []struct {
		outcome string
		code    int
	}{{"completed", ExitOK}, {"failed", ExitFailed}, {"cancelled", ExitCancelled}, {"", ExitUnavailable}} {
		d := &ingressDouble{events: history(c.outcome)}
		addr := serve(t, d)
		code, out, errOut := run(t, map[string]string{EnvAddress: addr}, "", "watch", "delib-1")
		if code != c.code {
			t.Errorf("%q: exit %d, want %d (%s)", c.outcome, code, c.code, errOut)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != len(d.events) {
			t.Fatalf("%q: %d lines for %d events:\n%s", c.outcome, len(lines), len(d.events), out)
		}
		if lines[0] != "2026-01-02T03:04:00.000Z submitted delib-1 task=t1 agents=3" ||
			lines[2] != "2026-01-02T03:04:03.000Z agent_completed delib-1 index=0 agent=a1 model=m1 score=0.80 tokens=12 duration=2s" ||
			lines[3] != `2026-01-02T03:04:04.000Z agent_failed delib-1 index=2 agent=a3 model=m3 duration=3s error_type=timeout error="timed out [2J"` {
			t.Errorf("%q: lines\n%s", c.outcome, out)
		}
		if c.outcome == "" && !strings.Contains(errOut, "the watch ended before the deliberation did") {
			t.Errorf("a stream without its end: %q", errOut)
		}
		if c.outcome == "failed" && !strings.Contains(errOut, "ended failed: all_agents_failed: every agent failed") {
			t.Errorf("failed: %q", errOut)
		}
	}
}

func TestWatchJSONLines(t *testing.T) {
	d := &ingressDouble{events: history("completed")}
	addr := serve(t, d)
	code, out, errOut := run(t, map[string]string{EnvAddress: addr}, "", "watch", "delib-1", "--output", "json")
	if code != ExitOK {
		t.Fatalf("exit %d %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != len(d.events) {
		t.Fatalf("%d lines, want %d", len(lines), len(d.events))
	}
	for i, l := range lines {
		var ev pb.LifecycleEvent
		if err := protojson.Unmarshal([]byte(l), &ev); err != nil || !proto.Equal(&ev, d.events[i]) {
			t.Errorf("line %d: %v %s", i, err, l)
		}
		var raw map[string]any
		if json.Unmarshal([]byte(l), &raw) != nil || raw["data_json"] == nil {
			t.Errorf("line %d is not JSON with proto field names: %s", i, l)
		}
	}
}

// submit --wait watches what it submitted; the agents it sent are named before their events.
func TestSubmitWaitEndsWithTheOutcome(t *testing.T) {
	d := &ingressDouble{events: history("failed")}
	addr := serve(t, d)
	code, out, errOut := run(t, map[string]string{EnvAddress: addr}, "", "submit", "--agents", "3", "--task-id", "t1", "--wait", "-q")
	if code != ExitFailed || !strings.HasPrefix(out, "delib-1\n2026-01-02T03:04:00.000Z submitted") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// The live display's model, fed the events a watch receives.
func TestLiveDisplayShowsAgentsAndElapsedTime(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	m := &watchModel{p: newProgress("delib-1", []*pb.Agent{{Id: "a1", Model: "m1"}, {Id: "a2", Model: "m2"}, {Id: "a3", Model: "m3"}}),
		st: newStyles(liveRenderer(&bytes.Buffer{}, func(string) string { return "1" })), now: func() time.Time { return now }}
	evs := history("completed")
	for _, ev := range evs[:4] {
		m.Update(eventMsg{ev: ev})
	}
	view := m.View()
	for _, want := range []string{"deliberation delib-1  task t1", "running", "2/3 agents finished", "elapsed 00:05",
		"pending 0  running 1  done 1  failed 1", "a1", "done", "score 0.80", "a2", "a3", "timeout: timed out", "q or Ctrl-C"} {
		if !strings.Contains(view, want) {
			t.Errorf("view lacks %q:\n%s", want, view)
		}
	}
	if strings.Contains(view, "\x1b[2J") {
		t.Error("an escape sequence from an agent's error reached the display")
	}
	for _, ev := range evs[4:] {
		m.Update(eventMsg{ev: ev})
	}
	if _, cmd := m.Update(streamEndMsg{}); cmd == nil {
		t.Error("the end of the stream does not quit the display")
	}
	now = now.Add(time.Hour) // the elapsed time stops at the end
	view = m.View()
	for _, want := range []string{"completed in 6s", "3/3 agents finished", "done 2  failed 1"} {
		if !strings.Contains(view, want) {
			t.Errorf("final view lacks %q:\n%s", want, view)
		}
	}
	if m.p.result() != nil {
		t.Errorf("a completed deliberation's result: %v", m.p.result())
	}
}

func TestProgressCountsAgentsLearntFromEvents(t *testing.T) {
	p := newProgress("d", nil)
	p.apply(event("submitted", 0, `{"num_agents":4}`))
	if pe, ru, do, fa := p.counts(); pe != 4 || ru+do+fa != 0 || p.state() != "pending" {
		t.Fatalf("after submitted: %d %d %d %d %s", pe, ru, do, fa, p.state())
	}
	p.apply(event("started", 1, `{}`))
	p.apply(event("agent_completed", 2, `{"agent_index":3}`))
	p.apply(event("agent_completed", 2, `{"agent_index":99999999}`)) // out of bounds: ignored
	if pe, ru, do, fa := p.counts(); pe != 0 || ru != 3 || do != 1 || fa != 0 || len(p.agents) != 4 {
		t.Fatalf("after started: %d %d %d %d (%d agents)", pe, ru, do, fa, len(p.agents))
	}
	p.apply(event("cancelled", 3, `{"reason":"stop"}`))
	if err := p.result(); ExitCode(err) != ExitCancelled || !strings.Contains(err.Error(), "stop") {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestCleanKeepsEscapesOffTheScreen(t *testing.T) {
	in := "ok\x1b]0;title\x07 \u202enext\u0085 é\n\tend"
	if got := clean(in, 100); got != "ok ]0;title   next  é  end" {
		t.Errorf("clean: %q", got)
	}
	if got := cleanText(in, 100, true); got != "ok ]0;title   next  é\n\tend" {
		t.Errorf("cleanText multiline: %q", got)
	}
	if got := clean("abcdef", 3); got != "abc…" {
		t.Errorf("cut: %q", got)
	}
}

func fmtAll(v any) string {
	var b strings.Builder
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		b.WriteString(fmt.Sprintf(f, v))
	}
	return b.String()
}

// On a terminal a refused watch says so before any display is drawn.
func TestWatchRefusedBeforeTheDisplay(t *testing.T) {
	d := &ingressDouble{err: status.Error(codes.NotFound, "deliberation delib-9 does not exist")}
	addr := serve(t, d)
	var out, errOut bytes.Buffer
	a := &App{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return map[string]string{EnvAddress: addr}[k] },
		IsTerminal: func(any) bool { return true }}
	if code := Main(context.Background(), a, []string{"watch", "delib-9"}); code != ExitNotFound || out.Len() != 0 ||
		errOut.String() != "rexctl: NOT_FOUND: deliberation delib-9 does not exist\n" {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
	}
}

// q (and Esc, Ctrl-C) stops watching: the display quits and says the deliberation goes on.
func TestLiveDisplayQuitsOnQ(t *testing.T) {
	for _, key := range []tea.KeyMsg{{Type: tea.KeyRunes, Runes: []rune("q")}, {Type: tea.KeyEsc}, {Type: tea.KeyCtrlC}} {
		m := &watchModel{p: newProgress("d", nil), st: newStyles(liveRenderer(&bytes.Buffer{}, func(string) string { return "" })), now: time.Now}
		if _, cmd := m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("x")}); cmd != nil || m.interrupted {
			t.Fatalf("x stopped the watch")
		}
		if _, cmd := m.Update(key); cmd == nil || !m.interrupted || !strings.Contains(m.View(), "stopped watching (the deliberation goes on)") {
			t.Errorf("%s: interrupted %v, view:\n%s", key, m.interrupted, m.View())
		}
	}
}
