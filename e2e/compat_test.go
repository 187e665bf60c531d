//go:build e2e

package e2e

// The compatibility suite (issue 10): every request shape of the original service's real
// callers (COMPAT.md "Real callers") is replayed through the ingress binary over gRPC, on the
// real stack (local Ray head, embedded NATS, the LLM stand-in), and what each caller reads is
// checked: the RPC answers, and the agent.response.* messages the original's NATS consumers
// read from stream AGENT_RESPONSES. Expectations are the original's contract (COMPAT.md
// "Behaviour callers rely on", "NATS subjects the payload publishes"), restated here as facts.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
)

// The original's contract, as COMPAT.md states it.
const (
	compatDefaultTimeout = 300 // timeout_seconds 0 -> 300
	compatDefaultRetries = 3   // max_retries 0 -> 3
	compatTemperature    = 0.7 // every LLM call but TASK_EXTRACTION's
	compatMaxTokens      = 2048

	subjectCompleted      = "agent.response.completed"
	subjectTaskExtraction = "agent.response.completed.task-extraction"
	subjectBacklogReview  = "agent.response.completed.backlog-review.role"
	subjectFailed         = "agent.response.failed"

	taskTypeExtraction   = "TASK_EXTRACTION"
	taskTypeBacklogRole  = "BACKLOG_REVIEW_ROLE"
	compatModelName      = "qwen3-coder-30b"
	compatFailingModel   = "qwen3-coder-30b-broken"
	compatReasoning      = "stand-in reasoning: weighed the trade-offs"
	compatNotFound       = "not_found"
	compatMaxLookupBytes = 512
)

// compatSuccessSubject is where a successful agent's response goes, by metadata.task_type.
func compatSuccessSubject(taskType string) string {
	switch taskType {
	case taskTypeExtraction:
		return subjectTaskExtraction
	case taskTypeBacklogRole:
		return subjectBacklogReview
	}
	return subjectCompleted
}

// backlogTaskIDShape is how the backlog-review consumers parse task_id.
var backlogTaskIDShape = regexp.MustCompile(`^ceremony-([^:]+):story-([^:]+):role-([^:]+)$`)

// runtimeShape is JobInfo.runtime as the original rendered it.
var runtimeShape = regexp.MustCompile(`^[0-9]+m [0-9]+s$`)

// compatRun makes this run's ceremony, story and plan ids unique on the shared Ray head.
var compatRun = strconv.FormatInt(time.Now().UnixNano()%1e9, 36)

// compatRequest is one request exactly as a caller builds it (the vllm_url is the stand-in's).
type compatRequest struct {
	backlog         bool // ExecuteBacklogReviewDeliberation
	taskID          string
	description     string
	role            string
	agents          []*pb.Agent
	storyID, planID string
	timeout         int32
	retries         int32
	metadata        map[string]string
	deadline        time.Duration // the caller's deadline on the Execute call; 0: none
}

func (r compatRequest) rpc() string {
	if r.backlog {
		return "ExecuteBacklogReviewDeliberation"
	}
	return "ExecuteDeliberation"
}

func (r compatRequest) taskType() string { return r.metadata["task_type"] }

func (r compatRequest) wantTimeout() float64 {
	if r.timeout == 0 {
		return compatDefaultTimeout
	}
	return float64(r.timeout)
}

func (r compatRequest) wantRetries() int {
	if r.retries == 0 {
		return compatDefaultRetries
	}
	return int(r.retries)
}

// wantMetadata is constraints.metadata after the original's rules (a backlog review's
// story_id copied into it when absent).
func (r compatRequest) wantMetadata() map[string]string {
	md := map[string]string{}
	for k, v := range r.metadata {
		md[k] = v
	}
	if _, ok := md["story_id"]; r.backlog && !ok {
		md["story_id"] = r.storyID
	}
	return md
}

func (r compatRequest) submit(client pb.RayExecutorServiceClient, llmURL string) (*pb.ExecuteDeliberationResponse, error) {
	ctx := context.Background()
	if r.deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.deadline)
		defer cancel()
	}
	if r.backlog {
		return client.ExecuteBacklogReviewDeliberation(ctx, &pb.ExecuteBacklogReviewDeliberationRequest{
			TaskId: r.taskID, TaskDescription: r.description, Role: r.role,
			Constraints: &pb.BacklogReviewTaskConstraints{StoryId: r.storyID, TimeoutSeconds: r.timeout,
				MaxRetries: r.retries, Metadata: r.metadata},
			Agents: r.agents, VllmUrl: llmURL, VllmModel: compatModelName,
		})
	}
	return client.ExecuteDeliberation(ctx, &pb.ExecuteDeliberationRequest{
		TaskId: r.taskID, TaskDescription: r.description, Role: r.role,
		Constraints: &pb.TaskConstraints{StoryId: r.storyID, PlanId: r.planID, TimeoutSeconds: r.timeout,
			MaxRetries: r.retries, Metadata: r.metadata},
		Agents: r.agents, VllmUrl: llmURL, VllmModel: compatModelName,
	})
}

func (r compatRequest) agent(id string) *pb.Agent {
	for _, a := range r.agents {
		if a.GetId() == id {
			return a
		}
	}
	return nil
}

// compatAgents are n agents named as the callers name them: <prefix>-001, -002, ...
func compatAgents(prefix, role string, n int) []*pb.Agent {
	var out []*pb.Agent
	for i := 1; i <= n; i++ {
		out = append(out, &pb.Agent{Id: fmt.Sprintf("%s-%03d", prefix, i), Role: role, Model: compatModelName})
	}
	return out
}

// compatCaller is one real caller: the requests it sends in sequence, and what it reads.
type compatCaller struct {
	name     string
	requests []compatRequest
	// failing agents have their every LLM call answered 500 (their model is
	// compatFailingModel).
	failing map[string]bool
	// wantStatus is the final GetDeliberationStatus status of every request.
	wantStatus string
	// pollEvery is the caller's polling interval.
	pollEvery time.Duration
	// reasoning: the stand-in returns reasoning, and the caller reads it in the result.
	reasoning bool
}

func ceremonyTaskID(ceremony, story, suffix string) string {
	return fmt.Sprintf("ceremony-%s:story-%s:%s", ceremony, story, suffix)
}

// compatCallers are the "Real callers" table of COMPAT.md, row by row, plus the failures
// that must reach agent.response.failed.
func compatCallers() []compatCaller {
	story := "US-" + compatRun
	ceremony := "BRC-" + compatRun
	plan := "PLAN-" + compatRun

	var planning []compatRequest
	for _, role := range []string{"ARCHITECT", "QA", "DEVOPS"} {
		tid := ceremonyTaskID(ceremony, story, "role-"+role)
		planning = append(planning, compatRequest{
			backlog: true, taskID: tid, role: role, storyID: story,
			description: fmt.Sprintf("Backlog review of story %s by the %s council.\nStory: As an operator I want audit "+
				"logs of every deliberation so that I can answer compliance questions.\nReview feasibility, risks and "+
				"acceptance criteria from the %s point of view.", story, role, role),
			agents:   compatAgents("agent-"+strings.ToLower(role), role, 3),
			metadata: map[string]string{"task_id": tid},
		})
	}

	failingAgents := compatAgents("agent-dev", "DEV", 3)
	failingAgents[1].Model = compatFailingModel
	singleFailing := compatAgents("agent-architect", "ARCHITECT", 1)
	singleFailing[0].Model = compatFailingModel

	return []compatCaller{{
		name: "orchestrator deliberation on an approved plan",
		requests: []compatRequest{{
			taskID: story + "-DEV", role: "DEV", storyID: story, planID: plan, timeout: 300, retries: 3,
			description: fmt.Sprintf("Implement story %s following plan %s: add an append-only audit log table "+
				"and write every deliberation's submission and result to it.", story, plan),
			agents: compatAgents("agent-dev", "DEV", 3),
		}},
		wantStatus: "completed", reasoning: true, pollEvery: 500 * time.Millisecond,
	}, {
		name:       "planning backlog-review ceremony, one request per role in sequence",
		requests:   planning,
		wantStatus: "completed", pollEvery: time.Second,
	}, {
		name: "planning ceremony processor backlog review",
		requests: []compatRequest{{
			backlog: true, taskID: ceremonyTaskID(ceremony+"-p", story, "role-QA"), role: "QA", storyID: story,
			description: "Review story " + story + " for testability: list the acceptance tests it needs.",
			agents:      compatAgents("agent-qa", "QA", 2),
			metadata:    map[string]string{"task_type": taskTypeBacklogRole},
		}},
		wantStatus: "completed", pollEvery: time.Second,
	}, {
		name: "e2e single deliberation",
		requests: []compatRequest{{
			backlog: true, taskID: ceremonyTaskID(ceremony+"-e2e", story, "role-ARCHITECT"), role: "ARCHITECT",
			storyID: story, description: "Review the architecture of story " + story + ".",
			agents:   compatAgents("agent-architect", "ARCHITECT", 1),
			metadata: map[string]string{"task_id": ceremonyTaskID(ceremony+"-e2e", story, "role-ARCHITECT"), "num_agents": "1"},
		}},
		wantStatus: "completed", pollEvery: 5 * time.Second, // it polls every 5 s, up to 300 s
	}, {
		name: "backlog-review processor task extraction (~70 KB of ceremony reviews)",
		requests: []compatRequest{{
			taskID: ceremonyTaskID(ceremony, story, "task-extraction"), role: "TASK_EXTRACTOR", storyID: story,
			description: ceremonyReviews(ceremony, story),
			agents:      []*pb.Agent{{Id: "task-extractor-001", Role: "TASK_EXTRACTOR", Model: compatModelName}},
			metadata:    map[string]string{"story_id": story, "ceremony_id": ceremony, "task_type": taskTypeExtraction},
		}},
		wantStatus: "completed", pollEvery: time.Second,
	}, {
		name: "planning ceremony processor task extraction",
		requests: []compatRequest{{
			taskID: ceremonyTaskID(ceremony+"-p", story, "task-extraction"), role: "TASK_EXTRACTOR", storyID: story,
			planID:      "",
			description: "Extract the implementation tasks of story " + story + " from its backlog review: " + strings.Repeat("the QA council asks for audit-log retention tests; ", 20),
			agents:      []*pb.Agent{{Id: "task-extractor-001", Role: "TASK_EXTRACTOR", Model: compatModelName}},
			metadata:    map[string]string{"ceremony_id": ceremony + "-p", "task_type": taskTypeExtraction},
		}},
		wantStatus: "completed", pollEvery: time.Second,
	}, {
		// Not a caller shape the original accepted (TestCompatTaskDerivation: its story_id is
		// empty): the same request with a story_id, to show the 5 s deadline holds.
		name: "task derivation, were its story_id set",
		requests: []compatRequest{{
			taskID: "derive-" + plan, role: "TASK_DERIVER", storyID: story, planID: plan, timeout: 120, retries: 2,
			description: "Derive the implementation tasks of plan " + plan + ".",
			agents:      []*pb.Agent{{Id: "task-deriver-001", Role: "TASK_DERIVER", Model: compatModelName}},
			deadline:    5 * time.Second,
		}},
		wantStatus: "completed", pollEvery: time.Second,
	}, {
		name: "orchestrator deliberation with one agent's LLM failing",
		requests: []compatRequest{{
			taskID: story + "-DEV-retry", role: "DEV", storyID: story, planID: plan, timeout: 300, retries: 3,
			description: "Implement story " + story + " (second attempt).",
			agents:      failingAgents,
		}},
		failing:    map[string]bool{failingAgents[1].GetId(): true},
		wantStatus: "completed", pollEvery: 500 * time.Millisecond,
	}, {
		name: "e2e single deliberation whose only agent fails",
		requests: []compatRequest{{
			backlog: true, taskID: ceremonyTaskID(ceremony+"-fail", story, "role-ARCHITECT"), role: "ARCHITECT",
			storyID: story, description: "Review the architecture of story " + story + " (LLM down).",
			agents:   singleFailing,
			metadata: map[string]string{"task_id": ceremonyTaskID(ceremony+"-fail", story, "role-ARCHITECT"), "num_agents": "1"},
		}},
		failing:    map[string]bool{singleFailing[0].GetId(): true},
		wantStatus: "failed", pollEvery: time.Second, // not "completed", the original's defect
	}}
}

// ceremonyReviews is a task-extraction prompt as the backlog-review processor builds it: the
// instruction, then every review of the ceremony (3 roles x 3 agents), ~70 KB.
func ceremonyReviews(ceremony, story string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Extract the implementation tasks of story %s from the reviews of backlog-review ceremony %s below.\n", story, ceremony)
	b.WriteString(`Answer with a JSON object {"tasks": [{"title": ..., "description": ..., "estimated_hours": ..., "priority": ...}]}.` + "\n\n")
	findings := []string{
		"The audit log must be append-only; updates and deletes are refused at the database level with a trigger.",
		"Each entry carries the deliberation id, the task id, the caller identity, a UTC timestamp and a hash of the previous entry.",
		"Retention is 400 days; a nightly job moves entries older than 90 days to object storage in compressed batches.",
		"Acceptance tests cover a tampered entry, a gap in the hash chain, a clock skew of five minutes and a full disk.",
		"Deployment adds a migration, a feature flag and a dashboard panel for write latency at the 99th percentile.",
		"Risks: write amplification under load, the size of the hash index, and the restore time of a year of entries.",
	}
	for _, role := range []string{"ARCHITECT", "QA", "DEVOPS"} {
		for i := 1; i <= 3; i++ {
			start := b.Len()
			fmt.Fprintf(&b, "### Review by agent-%s-%03d (%s)\n", strings.ToLower(role), i, role)
			for n := 0; b.Len()-start < 7750; n++ {
				fmt.Fprintf(&b, "%d. [%s] %s\n", n+1, role, findings[n%len(findings)])
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// compatPoll polls GetDeliberationStatus every `every` until a terminal status (at most
// 300 s, as the e2e caller does), and returns it with every status seen on the way. It runs
// outside the test goroutine, so it returns its failure.
func compatPoll(client pb.RayExecutorServiceClient, id string, every time.Duration) (*pb.GetDeliberationStatusResponse, []string, error) {
	var seen []string
	for deadline := time.Now().Add(300 * time.Second); time.Now().Before(deadline); time.Sleep(every) {
		st, err := client.GetDeliberationStatus(context.Background(), &pb.GetDeliberationStatusRequest{DeliberationId: id})
		if err != nil {
			return nil, seen, fmt.Errorf("GetDeliberationStatus %s: got %v, want OK", id, err)
		}
		if len(seen) == 0 || seen[len(seen)-1] != st.GetStatus() {
			seen = append(seen, st.GetStatus())
		}
		switch st.GetStatus() {
		case "completed", "failed", "cancelled":
			return st, seen, nil
		}
	}
	return nil, seen, fmt.Errorf("deliberation %s did not finish within 300 s (statuses %v)", id, seen)
}

// compatOutcome is what one caller got: the deliberations it submitted and their final status.
type compatOutcome struct {
	ids      []string
	statuses []*pb.GetDeliberationStatusResponse
	seen     [][]string
	err      error
}

// replay sends the caller's requests in sequence, checks each Execute answer as the caller
// reads it, then polls each deliberation to its end.
func (c compatCaller) replay(client pb.RayExecutorServiceClient, llmURL string) (o compatOutcome) {
	for _, r := range c.requests {
		begun := time.Now()
		resp, err := r.submit(client, llmURL)
		if err != nil {
			o.err = fmt.Errorf("%s %s: got %v (code %s), want it accepted", r.rpc(), r.taskID, err, status.Code(err))
			return o
		}
		if r.deadline > 0 && time.Since(begun) > r.deadline {
			o.err = fmt.Errorf("%s took %v, over the caller's deadline of %v", r.rpc(), time.Since(begun), r.deadline)
			return o
		}
		if resp.GetTaskId() != r.taskID || resp.GetDeliberationId() == "" || resp.GetStatus() != "submitted" {
			o.err = fmt.Errorf("%s: got task_id %q deliberation_id %q status %q, want task_id %q echoed, an id and status submitted",
				r.rpc(), resp.GetTaskId(), resp.GetDeliberationId(), resp.GetStatus(), r.taskID)
			return o
		}
		o.ids = append(o.ids, resp.GetDeliberationId())
	}
	for _, id := range o.ids {
		st, seen, err := compatPoll(client, id, c.pollEvery)
		if err != nil {
			o.err = err
			return o
		}
		o.statuses, o.seen = append(o.statuses, st), append(o.seen, seen)
	}
	return o
}

// compatMsg is one message on NATS.
type compatMsg struct {
	subject string
	msgID   string // the Nats-Msg-Id header
	env     map[string]any
	err     error // decoding the envelope
	data    []byte
}

// compatBus collects what consumers of the original read: every message stored on stream
// AGENT_RESPONSES (subjects agent.response.>) since it started, by correlation_id; and
// every message published on any subject no provisioned stream covers.
type compatBus struct {
	mu    sync.Mutex
	byID  map[string][]compatMsg
	stray []compatMsg
}

func startCompatBus(t *testing.T) *compatBus {
	t.Helper()
	b := &compatBus{byID: map[string][]compatMsg{}}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatalf("connect to NATS at %s: %v", natsURL, err)
	}
	t.Cleanup(nc.Close)

	// Every subject published must be covered by a stream (COMPAT.md: the original's
	// vllm.streaming.<id> was covered by none): the events and responses streams, and those of
	// specs/records.md (the work queue, the counters). The one exception is the cancel
	// signal, core NATS by design: a hint, the record is the truth.
	if _, err := nc.Subscribe(">", func(m *nats.Msg) {
		for _, p := range []string{"agent.response.", "ray_executor.deliberation.", "ray_executor.work.", "ray_executor.count.",
			"ray_executor.control.cancel.", "$JS.", "_INBOX.", "$SYS.", "$KV."} {
			if strings.HasPrefix(m.Subject, p) {
				return
			}
		}
		b.mu.Lock()
		b.stray = append(b.stray, compatMsg{subject: m.Subject, data: m.Data})
		b.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}

	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	begin := time.Now().Add(-2 * time.Second)
	cons, err := js.OrderedConsumer(ctx, natsbus.DefaultResponsesStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"agent.response.>"},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &begin,
	})
	if err != nil {
		t.Fatalf("consumer on stream %s: %v", natsbus.DefaultResponsesStream, err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		msg := compatMsg{subject: m.Subject(), msgID: m.Headers().Get(jetstream.MsgIDHeader), data: m.Data()}
		msg.err = json.Unmarshal(m.Data(), &msg.env)
		id, _ := msg.env["correlation_id"].(string)
		b.mu.Lock()
		b.byID[id] = append(b.byID[id], msg)
		b.mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return b
}

// await waits until n responses about deliberation id are stored, and returns them.
func (b *compatBus) await(t *testing.T, id string, n int) []compatMsg {
	t.Helper()
	var got []compatMsg
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		b.mu.Lock()
		got = append([]compatMsg(nil), b.byID[id]...)
		b.mu.Unlock()
		if len(got) >= n {
			break
		}
	}
	return got
}

// strays returns the messages outside the provisioned streams that mention one of ids.
func (b *compatBus) strays(ids []string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.stray {
		for _, id := range ids {
			if strings.Contains(m.subject, id) || strings.Contains(string(m.data), id) {
				out = append(out, m.subject)
				break
			}
		}
	}
	return out
}

func idempotencyKey(eventType, deliberationID, agentID string) string {
	sum := sha256.Sum256([]byte(eventType + ":" + deliberationID + ":" + agentID))
	return hex.EncodeToString(sum[:])
}

func isISO8601(v any) bool {
	s, ok := v.(string)
	if !ok {
		return false
	}
	_, err := time.Parse(time.RFC3339Nano, s)
	return err == nil
}

// TestCompatCallers replays every real caller's requests and checks what it reads: the
// Execute answer, the polled status and result, the LLM calls made for it, and its
// agent.response.* messages on NATS. The callers run at once, as in production (and so the
// suite takes the time of the slowest, whatever go test's -parallel).
func TestCompatCallers(t *testing.T) {
	t.Parallel()
	s := shared(t)
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url)
	bus := startCompatBus(t)

	callers := compatCallers()
	stubs := make([]*llmstub.Server, len(callers))
	outcomes := make([]compatOutcome, len(callers))
	var wg sync.WaitGroup
	for i, c := range callers {
		stub, url := llm(t)
		stub.Script(compatFailingModel, llmstub.Behavior{Status: 500})
		if c.reasoning {
			stub.Script(compatModelName, llmstub.Behavior{Reasoning: compatReasoning})
		}
		stubs[i] = stub
		wg.Add(1)
		go func() {
			defer wg.Done()
			outcomes[i] = c.replay(client, url)
		}()
	}
	wg.Wait()

	var ids []string
	for i, c := range callers {
		o := outcomes[i]
		ids = append(ids, o.ids...)
		t.Run(c.name, func(t *testing.T) {
			if o.err != nil {
				t.Fatal(o.err)
			}
			for k, r := range c.requests {
				t.Logf("%s %s: statuses polled %v", o.ids[k], r.taskID, o.seen[k])
				checkCompatStatus(t, c, r, o.statuses[k])
				checkCompatResponses(t, c, r, o.ids[k], bus.await(t, o.ids[k], len(r.agents)))
			}
			checkCompatLLMCalls(t, c, stubs[i].Calls())
		})
	}
	if got := bus.strays(ids); len(got) > 0 {
		t.Errorf("got messages about these deliberations on subjects %v, want every subject covered by a provisioned stream", got)
	}
}

// checkCompatStatus checks the GetDeliberationStatus answer the caller reads at the end.
func checkCompatStatus(t *testing.T, c compatCaller, r compatRequest, st *pb.GetDeliberationStatusResponse) {
	t.Helper()
	if st.GetStatus() != c.wantStatus {
		t.Fatalf("%s: got status %q (%s), want %q", r.taskID, st.GetStatus(), st.GetErrorMessage(), c.wantStatus)
	}
	if c.wantStatus == "failed" {
		if st.GetErrorMessage() == "" {
			t.Errorf("%s: got a failed status without error_message", r.taskID)
		}
		return
	}
	res := st.GetResult()
	a := r.agent(res.GetAgentId())
	switch {
	case a == nil || c.failing[a.GetId()]:
		t.Errorf("%s: got result of agent %q, want one of the agents that completed", r.taskID, res.GetAgentId())
	case len(r.agents) == 1 && res.GetAgentId() != r.agents[0].GetId():
		t.Errorf("%s: got result of agent %q, want the one agent's", r.taskID, res.GetAgentId())
	}
	if res.GetProposal() == "" {
		t.Errorf("%s: got an empty proposal", r.taskID)
	}
	if res.GetScore() <= 0 {
		t.Errorf("%s: got score %v, want a score above 0 (the original's was always 0)", r.taskID, res.GetScore())
	}
	if c.reasoning && res.GetReasoning() != compatReasoning {
		t.Errorf("%s: got reasoning %q, want the LLM's %q (the original never filled it)", r.taskID, res.GetReasoning(), compatReasoning)
	}
	if len(r.agents) < 2 {
		return
	}
	md := res.GetMetadata()
	want := map[string]string{
		"total_agents":     strconv.Itoa(len(r.agents)),
		"completed_agents": strconv.Itoa(len(r.agents) - len(c.failing)),
		"failed_agents":    strconv.Itoa(len(c.failing)),
	}
	for k, v := range want {
		if md[k] != v {
			t.Errorf("%s: got result metadata %s = %q, want %q", r.taskID, k, md[k], v)
		}
	}
	if avg, err := strconv.ParseFloat(md["average_score"], 64); err != nil || avg <= 0 {
		t.Errorf("%s: got result metadata average_score %q, want a number above 0", r.taskID, md["average_score"])
	}
}

// checkCompatResponses checks the agent.response.* messages of one deliberation as the
// original's consumers read them.
func checkCompatResponses(t *testing.T, c compatCaller, r compatRequest, id string, msgs []compatMsg) {
	t.Helper()
	if len(msgs) != len(r.agents) {
		t.Errorf("%s: got %d agent.response messages on stream %s, want one per agent: %d (a collector waits for num_agents)",
			r.taskID, len(msgs), natsbus.DefaultResponsesStream, len(r.agents))
	}
	wantTaskID := r.taskID
	if v := r.metadata["task_id"]; v != "" {
		wantTaskID = v
	}
	agents := map[string]bool{}
	for _, m := range msgs {
		if m.err != nil {
			t.Errorf("%s: message on %s is not a JSON envelope: %v", r.taskID, m.subject, m.err)
			continue
		}
		env, p := m.env, map[string]any{}
		if v, ok := env["payload"].(map[string]any); ok {
			p = v
		} else {
			t.Errorf("%s: got payload %v, want an object", r.taskID, env["payload"])
		}
		agentID, _ := p["agent_id"].(string)
		a := r.agent(agentID)
		if a == nil {
			t.Errorf("%s: got payload agent_id %v, want one of the request's agents", r.taskID, p["agent_id"])
			continue
		}
		if agents[agentID] {
			t.Errorf("%s: got two responses of agent %s", r.taskID, agentID)
		}
		agents[agentID] = true
		failed := c.failing[agentID]
		where := fmt.Sprintf("%s agent %s", r.taskID, agentID)

		// Subject and envelope.
		wantSubject := compatSuccessSubject(r.taskType())
		if failed {
			wantSubject = subjectFailed
		}
		if m.subject != wantSubject {
			t.Errorf("%s: got subject %s, want %s (metadata.task_type %q)", where, m.subject, wantSubject, r.taskType())
		}
		if env["event_type"] != m.subject {
			t.Errorf("%s: got event_type %v, want the subject %s", where, env["event_type"], m.subject)
		}
		wantKey := idempotencyKey(m.subject, id, agentID)
		if env["idempotency_key"] != wantKey || m.msgID != wantKey {
			t.Errorf("%s: got idempotency_key %v (Nats-Msg-Id %q), want sha256(%s:%s:%s) = %s",
				where, env["idempotency_key"], m.msgID, m.subject, id, agentID, wantKey)
		}
		if env["correlation_id"] != id {
			t.Errorf("%s: got correlation_id %v, want the deliberation id %s", where, env["correlation_id"], id)
		}
		if !isISO8601(env["timestamp"]) {
			t.Errorf("%s: got envelope timestamp %v, want ISO-8601", where, env["timestamp"])
		}
		if prod, _ := env["producer"].(string); prod == "" {
			t.Errorf("%s: got producer %v, want a name", where, env["producer"])
		}
		if md, ok := env["metadata"].(map[string]any); !ok {
			t.Errorf("%s: got envelope metadata %v, want an object", where, env["metadata"])
		} else if md["deliberation_id"] != id || (r.taskType() != "" && md["task_type"] != r.taskType()) {
			t.Errorf("%s: got envelope metadata %v, want deliberation_id %s and task_type %q", where, md, id, r.taskType())
		}

		// The payload fields consumers rely on.
		if p["task_id"] != wantTaskID {
			t.Errorf("%s: got payload task_id %v, want %s", where, p["task_id"], wantTaskID)
		}
		if p["role"] != a.GetRole() {
			t.Errorf("%s: got payload role %v, want %s", where, p["role"], a.GetRole())
		}
		if d, ok := p["duration_ms"].(float64); !ok || d < 0 {
			t.Errorf("%s: got duration_ms %v, want a number of milliseconds", where, p["duration_ms"])
		}
		if !isISO8601(p["timestamp"]) {
			t.Errorf("%s: got payload timestamp %v, want ISO-8601", where, p["timestamp"])
		}
		if p["num_agents"] != float64(len(r.agents)) {
			t.Errorf("%s: got num_agents %v, want %d", where, p["num_agents"], len(r.agents))
		}
		if p["success"] != !failed {
			t.Errorf("%s: got success %v, want %v", where, p["success"], !failed)
		}
		if p["model"] != a.GetModel() {
			t.Errorf("%s: got payload model %v, want the agent's %s", where, p["model"], a.GetModel())
		}
		if r.backlog {
			if mt := backlogTaskIDShape.FindStringSubmatch(fmt.Sprint(p["task_id"])); mt == nil || mt[3] != r.role {
				t.Errorf("%s: got task_id %v, want ceremony-X:story-Y:role-%s", where, p["task_id"], r.role)
			}
		}
		if failed {
			if p["status"] != "failed" {
				t.Errorf("%s: got status %v, want failed", where, p["status"])
			}
			if e, _ := p["error"].(string); e == "" || !strings.Contains(e, "500") {
				t.Errorf("%s: got error %v, want one naming the LLM's HTTP 500", where, p["error"])
			}
			if e, _ := p["error_type"].(string); e == "" {
				t.Errorf("%s: got error_type %v, want one", where, p["error_type"])
			}
			continue
		}
		if p["status"] != "completed" {
			t.Errorf("%s: got status %v, want completed", where, p["status"])
		}
		checkCompatProposal(t, where, r, a, p["proposal"])
		checkCompatConstraints(t, where, r, p["constraints"])
		if r.taskType() == taskTypeExtraction {
			checkCompatTasks(t, where, r, p)
		}
	}
}

func checkCompatProposal(t *testing.T, where string, r compatRequest, a *pb.Agent, v any) {
	t.Helper()
	prop, ok := v.(map[string]any)
	if !ok {
		t.Errorf("%s: got proposal %v, want an object", where, v)
		return
	}
	wantTemp := compatTemperature
	if r.taskType() == taskTypeExtraction {
		wantTemp = 0
	}
	if c, _ := prop["content"].(string); c == "" {
		t.Errorf("%s: got proposal content %v, want the answer", where, prop["content"])
	}
	if prop["author_id"] != a.GetId() || prop["author_role"] != a.GetRole() || prop["model"] != a.GetModel() {
		t.Errorf("%s: got proposal author_id %v author_role %v model %v, want %s %s %s",
			where, prop["author_id"], prop["author_role"], prop["model"], a.GetId(), a.GetRole(), a.GetModel())
	}
	if prop["temperature"] != wantTemp {
		t.Errorf("%s: got proposal temperature %v, want %v", where, prop["temperature"], wantTemp)
	}
	if n, ok := prop["tokens"].(float64); !ok || n <= 0 {
		t.Errorf("%s: got proposal tokens %v, want the LLM's usage.total_tokens", where, prop["tokens"])
	}
}

func checkCompatConstraints(t *testing.T, where string, r compatRequest, v any) {
	t.Helper()
	c, ok := v.(map[string]any)
	if !ok {
		t.Errorf("%s: got constraints %v, want an object", where, v)
		return
	}
	if c["story_id"] != r.storyID || c["plan_id"] != r.planID {
		t.Errorf("%s: got constraints story_id %v plan_id %v, want %q %q", where, c["story_id"], c["plan_id"], r.storyID, r.planID)
	}
	if c["timeout_seconds"] != r.wantTimeout() || c["max_retries"] != float64(r.wantRetries()) {
		t.Errorf("%s: got constraints timeout_seconds %v max_retries %v, want %v %d (0 means 300 and 3)",
			where, c["timeout_seconds"], c["max_retries"], r.wantTimeout(), r.wantRetries())
	}
	got := map[string]string{}
	if md, ok := c["metadata"].(map[string]any); ok {
		for k, v := range md {
			got[k] = fmt.Sprint(v)
		}
	}
	if want := r.wantMetadata(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: got constraints metadata %v, want %v", where, got, want)
	}
}

// checkCompatTasks checks what the task-extraction consumer reads: tasks[] with titles, and
// task_id, story_id and ceremony_id.
func checkCompatTasks(t *testing.T, where string, r compatRequest, p map[string]any) {
	t.Helper()
	tasks, ok := p["tasks"].([]any)
	if !ok || len(tasks) == 0 {
		t.Errorf("%s: got tasks %v, want the extracted tasks", where, p["tasks"])
	}
	for i, task := range tasks {
		if title, _ := task.(map[string]any)["title"].(string); title == "" {
			t.Errorf("%s: got tasks[%d] %v, want a title", where, i, task)
		}
	}
	wantStory := r.metadata["story_id"]
	if wantStory == "" {
		wantStory = r.storyID
	}
	if p["story_id"] != wantStory || p["ceremony_id"] != r.metadata["ceremony_id"] {
		t.Errorf("%s: got story_id %v ceremony_id %v, want %s %s", where, p["story_id"], p["ceremony_id"], wantStory, r.metadata["ceremony_id"])
	}
}

// checkCompatLLMCalls checks the LLM calls made for a caller's requests: one per agent
// (1 + max_retries for an agent whose LLM fails), with the agent's model, the system and
// user messages (task, then the metadata as context lines), temperature 0.7 and max_tokens
// 2048; TASK_EXTRACTION: temperature 0 and a JSON response format.
func checkCompatLLMCalls(t *testing.T, c compatCaller, calls []llmstub.Call) {
	t.Helper()
	want := map[string]int{} // "<task_id>|<model>" -> calls
	for _, r := range c.requests {
		for _, a := range r.agents {
			n := 1
			if c.failing[a.GetId()] {
				n += r.wantRetries()
			}
			want[r.taskID+"|"+a.GetModel()] += n
		}
	}
	got := map[string]int{}
	for _, call := range calls {
		var r *compatRequest
		var system, user string
		if len(call.Messages) == 2 {
			system, user = call.Messages[0].Content, call.Messages[1].Content
		}
		if len(call.Messages) != 2 || call.Messages[0].Role != "system" || call.Messages[1].Role != "user" || system == "" {
			t.Errorf("got LLM messages %v, want a system and a user message", call.Messages)
		}
		for i := range c.requests {
			if strings.HasPrefix(user, c.requests[i].description) {
				r = &c.requests[i]
			}
		}
		if r == nil {
			t.Errorf("got an LLM call whose user message (%d bytes) does not start with any request's task_description", len(user))
			continue
		}
		got[r.taskID+"|"+call.Model]++
		for k, v := range r.wantMetadata() {
			if line := k + ": " + v; !strings.Contains(user[len(r.description):], "\n"+line) {
				t.Errorf("%s: the LLM's user message lacks the context line %q", r.taskID, line)
			}
		}
		wantTemp, wantFormat := compatTemperature, false
		if r.taskType() == taskTypeExtraction {
			wantTemp, wantFormat = 0, true
		}
		if call.Temperature == nil || *call.Temperature != wantTemp || call.MaxTokens != compatMaxTokens {
			t.Errorf("%s: got LLM temperature %v max_tokens %d, want %v and %d", r.taskID, call.Temperature, call.MaxTokens, wantTemp, compatMaxTokens)
		}
		if gotFormat := call.Format != nil && call.Format["type"] == "json_object"; gotFormat != wantFormat {
			t.Errorf("%s: got LLM response_format %v, want a JSON object format: %v", r.taskID, call.Format, wantFormat)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got LLM calls by task|model %v, want %v", got, want)
	}
}

// TestCompatTaskDerivation: the task-derivation caller sends story_id "", which the
// original refused (constraints.story_id is required): INVALID_ARGUMENT naming the field,
// within the caller's 5 s deadline.
func TestCompatTaskDerivation(t *testing.T) {
	t.Parallel()
	s := shared(t)
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url)
	_, url := llm(t)
	plan := "PLAN-" + compatRun
	r := compatRequest{
		taskID: "derive-" + plan, role: "TASK_DERIVER", storyID: "", planID: plan, timeout: 120, retries: 2,
		description: "Derive the implementation tasks of plan " + plan + ".",
		agents:      []*pb.Agent{{Id: "task-deriver-001", Role: "TASK_DERIVER", Model: compatModelName}},
		deadline:    5 * time.Second,
	}
	_, err := r.submit(client, url)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "constraints.story_id") {
		t.Errorf("got %v, want INVALID_ARGUMENT naming constraints.story_id (required by the original)", err)
	}
}

// TestCompatHealthCheck: planning's health check, GetStatus with a 5 s deadline, healthy only
// if status.lower() == "healthy".
func TestCompatHealthCheck(t *testing.T) {
	t.Parallel()
	s := shared(t)
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := client.GetStatus(ctx, &pb.GetStatusRequest{})
	if err != nil {
		t.Fatalf("GetStatus with a 5 s deadline: got %v, want OK", err)
	}
	if strings.ToLower(resp.GetStatus()) != "healthy" {
		t.Errorf("got status %q (components %v), want healthy", resp.GetStatus(), resp.GetComponents())
	}
	if resp.GetUptimeSeconds() < 0 {
		t.Errorf("got uptime_seconds %d, want >= 0", resp.GetUptimeSeconds())
	}
}

// TestCompatMonitoring: monitoring reads GetStatus(include_stats) and every JobInfo field of
// GetActiveJobs, start_time and end_time converted to datetimes.
func TestCompatMonitoring(t *testing.T) {
	t.Parallel()
	s := shared(t)
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url)
	stub, url := llm(t)
	stub.Script("slow-model", llmstub.Behavior{Delay: 2 * time.Minute})
	story := "US-MON-" + compatRun
	taskID := story + "-DEV"
	submitted := time.Now()
	resp, err := client.ExecuteDeliberation(context.Background(), &pb.ExecuteDeliberationRequest{
		TaskId: taskID, TaskDescription: "Implement story " + story + ".", Role: "DEV",
		Constraints: &pb.TaskConstraints{StoryId: story, PlanId: "PLAN-MON", TimeoutSeconds: 180, MaxRetries: 1},
		Agents:      []*pb.Agent{{Id: "agent-dev-001", Role: "DEV", Model: "slow-model"}},
		VllmUrl:     url, VllmModel: "slow-model",
	})
	if err != nil {
		t.Fatalf("ExecuteDeliberation: %v", err)
	}
	id := resp.GetDeliberationId()
	t.Cleanup(func() {
		_, _ = client.CancelDeliberation(context.Background(), &pb.CancelDeliberationRequest{DeliberationId: id})
	})
	// The agent has called the LLM: the driver is running.
	for deadline := time.Now().Add(2 * time.Minute); len(stub.Calls()) == 0; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("deliberation %s never called the LLM", id)
		}
	}
	time.Sleep(1100 * time.Millisecond) // a runtime of at least a second

	jobs, err := client.GetActiveJobs(context.Background(), &pb.GetActiveJobsRequest{})
	if err != nil {
		t.Fatalf("GetActiveJobs: %v", err)
	}
	now := time.Now()
	var mine *pb.JobInfo
	for _, j := range jobs.GetJobs() {
		// Every listed job, ours or another test's on the shared head, reads the same way.
		if j.GetJobId() == "" || j.GetSubmissionId() != j.GetJobId() || j.GetName() != "vllm-agent-job-"+j.GetJobId() {
			t.Errorf("got job_id %q submission_id %q name %q, want job_id = submission_id and name vllm-agent-job-<id>",
				j.GetJobId(), j.GetSubmissionId(), j.GetName())
		}
		if !runtimeShape.MatchString(j.GetRuntime()) {
			t.Errorf("job %s: got runtime %q, want <m>m <s>s", j.GetJobId(), j.GetRuntime())
		}
		for name, ts := range map[string]*timestamppb.Timestamp{"start_time": j.GetStartTime(), "end_time": j.GetEndTime()} {
			if err := ts.CheckValid(); ts != nil && err != nil {
				t.Errorf("job %s: got %s %v: %v, want a valid Timestamp or none", j.GetJobId(), name, ts, err)
			}
		}
		if j.GetJobId() == id {
			mine = j
		}
	}
	if mine == nil {
		t.Fatalf("running deliberation %s is not in GetActiveJobs (%d jobs)", id, len(jobs.GetJobs()))
	}
	if mine.GetStatus() != "RUNNING" || mine.GetRole() != "DEV" || mine.GetTaskId() != taskID {
		t.Errorf("got status %q role %q task_id %q, want RUNNING DEV %s", mine.GetStatus(), mine.GetRole(), mine.GetTaskId(), taskID)
	}
	if err := mine.GetStartTime().CheckValid(); err != nil {
		t.Errorf("got start_time %v: %v, want a valid Timestamp", mine.GetStartTime(), err)
	} else if st := mine.GetStartTime().AsTime(); st.Before(submitted.Add(-5*time.Second)) || st.After(now.Add(5*time.Second)) {
		t.Errorf("got start_time %v, want between the submission (%v) and now (%v)", st, submitted, now)
	}
	if et := mine.GetEndTime(); et != nil {
		t.Errorf("got end_time %v for a running deliberation, want none", et.AsTime())
	}
	if rt := mine.GetRuntime(); !runtimeShape.MatchString(rt) || rt == "0m 0s" {
		t.Errorf("got runtime %q after more than a second, want <m>m <s>s", rt)
	}

	gs, err := client.GetStatus(context.Background(), &pb.GetStatusRequest{IncludeStats: true})
	if err != nil {
		t.Fatalf("GetStatus(include_stats): %v", err)
	}
	st := gs.GetStats()
	if gs.GetStatus() != "healthy" || st == nil {
		t.Fatalf("got status %q stats %v (components %v), want healthy with stats", gs.GetStatus(), st, gs.GetComponents())
	}
	if st.GetTotalDeliberations() < 1 || st.GetActiveDeliberations() < 1 || st.GetCompletedDeliberations() < 0 || st.GetFailedDeliberations() < 0 ||
		st.GetTotalDeliberations() < st.GetActiveDeliberations()+st.GetCompletedDeliberations()+st.GetFailedDeliberations() ||
		st.GetAverageExecutionTimeMs() < 0 {
		t.Errorf("got stats %v, want at least this running one counted, total >= active + completed + failed, average >= 0", st)
	}
}

// TestCompatUnknownIDs: callers poll ids across deployments, including the ones the original
// minted (deliberation-<task_id>-<unix seconds>); the original answered OK + not_found for
// every unknown id. Cancel and Watch (new RPCs) answer NOT_FOUND; only an empty id or one
// over 512 bytes is malformed.
func TestCompatUnknownIDs(t *testing.T) {
	t.Parallel()
	s := shared(t)
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url)
	long := strings.Repeat("é", compatMaxLookupBytes/2) // 512 bytes
	for _, tc := range []struct {
		name, id string
		want     codes.Code // of all three RPCs; OK means status not_found, Cancel and Watch NOT_FOUND
	}{
		{"backlog review id the original minted", "deliberation-ceremony-c1:story-s1:role-ARCHITECT-1733000000", codes.OK},
		{"task derivation id the original minted", "deliberation-derive-p1-1733000000", codes.OK},
		{"orchestrator id the original minted", "deliberation-US-42-DEV-1733000000", codes.OK},
		{"task extraction id the original minted", "deliberation-ceremony-c1:story-s1:task-extraction-1733000000", codes.OK},
		{"this system's shape, never submitted", "delib-aaaaaaaaaaaaaaaaaaaaaaaaaa", codes.OK},
		{"spaces", "deliberation with spaces 1733000000", codes.OK},
		{"dots", "deliberation.story.s1.1733000000", codes.OK},
		{"NATS wildcards", "deliberation-*->", codes.OK},
		{"path", "../../api/jobs", codes.OK},
		{"unicode", "deliberation-ü-🚀-1733000000", codes.OK},
		{"129 characters", "d" + strings.Repeat("1", 128), codes.OK},
		{"512 bytes", long, codes.OK},
		{"empty", "", codes.InvalidArgument},
		{"513 bytes", "x" + long, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			st, err := client.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: tc.id})
			switch {
			case tc.want == codes.OK && (err != nil || st.GetStatus() != compatNotFound):
				t.Errorf("GetDeliberationStatus: got %v %v, want OK with status not_found", st, err)
			case tc.want != codes.OK && status.Code(err) != tc.want:
				t.Errorf("GetDeliberationStatus: got %v %v, want %s", st, err, tc.want)
			}
			wantAct := tc.want
			if wantAct == codes.OK {
				wantAct = codes.NotFound
			}
			if _, err := client.CancelDeliberation(ctx, &pb.CancelDeliberationRequest{DeliberationId: tc.id}); status.Code(err) != wantAct {
				t.Errorf("CancelDeliberation: got %v, want %s", err, wantAct)
			}
			ws, err := client.WatchDeliberation(ctx, &pb.WatchDeliberationRequest{DeliberationId: tc.id})
			if err == nil {
				_, err = ws.Recv()
			}
			if status.Code(err) != wantAct {
				t.Errorf("WatchDeliberation: got %v, want %s", err, wantAct)
			}
		})
	}
}
