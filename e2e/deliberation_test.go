//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

func TestOneAgentCompletes(t *testing.T) {
	t.Parallel()
	s := shared(t)
	stub, url := llm(t)
	resp, err := s.submit(t, request(uniqueTask(t), url, "model-a"), rpcevents.CallOptions{})
	if err != nil {
		t.Fatalf("ExecuteDeliberation: %v", err)
	}
	if resp.GetStatus() != "submitted" || resp.GetDeliberationId() == "" {
		t.Fatalf("got status %q id %q, want submitted and an id", resp.GetStatus(), resp.GetDeliberationId())
	}
	st := s.waitDone(t, s.status.url, resp.GetDeliberationId())
	if st.GetStatus() != "completed" {
		t.Fatalf("got status %q (%s), want completed", st.GetStatus(), st.GetErrorMessage())
	}
	if got := st.GetResult().GetAgentId(); got != "agent-1" {
		t.Errorf("got result agent %q, want agent-1", got)
	}
	if !strings.Contains(st.GetResult().GetProposal(), "LLM stand-in, model model-a") {
		t.Errorf("got proposal %q, want the stand-in's answer for model-a", st.GetResult().GetProposal())
	}
	if n := len(st.GetAgentResults()); n != 1 {
		t.Fatalf("got %d agent results, want 1", n)
	}
	if st.GetAgentResults()[0].GetTokens() <= 0 {
		t.Errorf("got %d tokens, want > 0", st.GetAgentResults()[0].GetTokens())
	}
	if calls := stub.Calls(); len(calls) != 1 || calls[0].Model != "model-a" {
		t.Errorf("got LLM calls %+v, want one for model-a", calls)
	}
}

func TestThreeAgentsRunInParallelAndShowWhileActive(t *testing.T) {
	t.Parallel()
	s := shared(t)
	stub, url := llm(t)
	for _, m := range []string{"m1", "m2", "m3"} {
		stub.Script(m, llmstub.Behavior{Delay: 4 * time.Second})
	}
	task := uniqueTask(t)
	resp, err := s.submit(t, request(task, url, "m1", "m2", "m3"), rpcevents.CallOptions{})
	if err != nil {
		t.Fatalf("ExecuteDeliberation: %v", err)
	}
	id := resp.GetDeliberationId()

	// While it runs, GetActiveJobs lists it, with the original's JobInfo shape.
	var seen *pb.JobInfo
	for deadline := time.Now().Add(90 * time.Second); seen == nil && time.Now().Before(deadline); {
		for _, j := range s.activeJobs(t) {
			if j.GetJobId() == id {
				seen = j
			}
		}
		if seen == nil {
			time.Sleep(200 * time.Millisecond)
		}
	}
	if seen == nil {
		t.Fatalf("deliberation %s never appeared in GetActiveJobs", id)
	}
	if seen.GetSubmissionId() != id || seen.GetName() != "vllm-agent-job-"+id || seen.GetTaskId() != task ||
		seen.GetRole() != "architect" || seen.GetTotalAgents() != 3 {
		t.Errorf("got JobInfo %v, want job_id = submission_id = %s, name vllm-agent-job-<id>, task %s, role architect, 3 agents", seen, id, task)
	}
	if st := seen.GetStatus(); st != "RUNNING" && st != "PENDING" {
		t.Errorf("got JobInfo status %q, want RUNNING or PENDING", st)
	}
	if !strings.HasSuffix(seen.GetRuntime(), "s") || !strings.Contains(seen.GetRuntime(), "m ") {
		t.Errorf("got runtime %q, want <m>m <s>s", seen.GetRuntime())
	}

	st := s.waitDone(t, s.status.url, id)
	if st.GetStatus() != "completed" || st.GetCompletedAgents() != 3 {
		t.Fatalf("got status %q with %d completed agents (%s), want completed with 3", st.GetStatus(), st.GetCompletedAgents(), st.GetErrorMessage())
	}
	// All three LLM calls were in flight at once: the agents ran in parallel.
	if got := stub.MaxConcurrent(); got != 3 {
		t.Errorf("got %d LLM calls in flight at most, want 3 (agents must run in parallel)", got)
	}
	md := st.GetResult().GetMetadata()
	if md["total_agents"] != "3" || md["completed_agents"] != "3" || md["failed_agents"] != "0" || md["average_score"] == "" {
		t.Errorf("got result metadata %v, want total 3, completed 3, failed 0 and an average score", md)
	}
	// Finished: no longer listed.
	for _, j := range s.activeJobs(t) {
		if j.GetJobId() == id {
			t.Errorf("finished deliberation %s still listed as active (%s)", id, j.GetStatus())
		}
	}
}

func TestFailingAgentIsReportedWhileOthersSucceed(t *testing.T) {
	t.Parallel()
	s := shared(t)
	stub, url := llm(t)
	stub.Script("broken", llmstub.Behavior{Status: 500})
	resp, err := s.submit(t, request(uniqueTask(t), url, "good-1", "broken", "good-2"), rpcevents.CallOptions{})
	if err != nil {
		t.Fatalf("ExecuteDeliberation: %v", err)
	}
	st := s.waitDone(t, s.status.url, resp.GetDeliberationId())
	if st.GetStatus() != "completed" {
		t.Fatalf("got status %q (%s), want completed", st.GetStatus(), st.GetErrorMessage())
	}
	if st.GetCompletedAgents() != 2 || st.GetFailedAgents() != 1 {
		t.Errorf("got %d completed, %d failed, want 2 and 1", st.GetCompletedAgents(), st.GetFailedAgents())
	}
	results := st.GetAgentResults()
	if len(results) != 3 {
		t.Fatalf("got %d agent results, want 3", len(results))
	}
	broken := results[1]
	if broken.GetAgentId() != "agent-2" || broken.GetStatus() != "failed" || !strings.Contains(broken.GetError(), "500") {
		t.Errorf("got %v, want agent-2 failed with an error naming HTTP 500", broken)
	}
	if broken.GetAttempts() != 2 {
		t.Errorf("got %d attempts for the failing agent, want 2 (max_retries 1)", broken.GetAttempts())
	}
	if st.GetResult().GetAgentId() == "agent-2" {
		t.Errorf("the failed agent was chosen as the best result")
	}
	if md := st.GetResult().GetMetadata(); md["failed_agents"] != "1" {
		t.Errorf("got result metadata %v, want failed_agents 1", md)
	}
}

func TestAllAgentsFailingFailsTheDeliberation(t *testing.T) {
	t.Parallel()
	s := shared(t)
	stub, url := llm(t)
	stub.Script("broken-1", llmstub.Behavior{Status: 503})
	stub.Script("broken-2", llmstub.Behavior{Status: 400})
	req := request(uniqueTask(t), url, "broken-1", "broken-2")
	req.Constraints.MaxRetries = 1
	resp, err := s.submit(t, req, rpcevents.CallOptions{})
	if err != nil {
		t.Fatalf("ExecuteDeliberation: %v", err)
	}
	st := s.waitDone(t, s.status.url, resp.GetDeliberationId())
	if st.GetStatus() != "failed" {
		t.Fatalf("got status %q, want failed", st.GetStatus())
	}
	if st.GetErrorMessage() == "" || st.GetErrorType() != "all_agents_failed" {
		t.Errorf("got error %q type %q, want a message and all_agents_failed", st.GetErrorMessage(), st.GetErrorType())
	}
	if len(st.GetAgentResults()) != 2 || st.GetFailedAgents() != 2 {
		t.Errorf("got %d results with %d failed, want 2 and 2", len(st.GetAgentResults()), st.GetFailedAgents())
	}
	if st.GetResult() != nil {
		t.Errorf("got a best result %v for a deliberation where every agent failed", st.GetResult())
	}
}

// A hundred concurrent submissions under one idempotency key: one deliberation id for all,
// one record, one run (the LLM stand-in sees one call per agent), exactly one submitted and
// one terminal event, and exactly one of the hundred answers is not a duplicate.
func TestSameKeyHundredTimesConcurrentlyRunsOnce(t *testing.T) {
	t.Parallel()
	s := shared(t)
	stub, url := llm(t)
	task := uniqueTask(t)
	req := request(task, url, "model-a", "model-b")
	key := "retry-key-" + task

	const n = 100
	ids := make([]string, n)
	dups := make([]bool, n)
	errs := make([]error, n)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-gate
			resp, err := s.submit(t, req, rpcevents.CallOptions{IdempotencyKey: key})
			ids[i], dups[i], errs[i] = resp.GetDeliberationId(), resp.GetDuplicate(), err
		}(i)
	}
	close(gate)
	wg.Wait()
	firsts := 0
	for i, err := range errs {
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if ids[i] != ids[0] {
			t.Fatalf("request %d got deliberation %q, request 0 got %q, want the same", i, ids[i], ids[0])
		}
		if !dups[i] {
			firsts++
		}
	}
	if firsts != 1 {
		t.Errorf("got %d answers not marked duplicate, want exactly 1", firsts)
	}
	// The same key with a different request is a conflict, not a silent reuse.
	other := request(task, url, "model-c")
	if _, err := s.submit(t, other, rpcevents.CallOptions{IdempotencyKey: key}); !errors.Is(err, domain.ErrConflict) {
		t.Errorf("got %v for a different request under the same key, want ErrConflict", err)
	}
	if st := s.waitDone(t, s.status.url, ids[0]); st.GetStatus() != "completed" {
		t.Fatalf("got %q (%s), want completed", st.GetStatus(), st.GetErrorMessage())
	}
	if recs := s.recordsForTask(t, task); len(recs) != 1 || recs[0].Attempts != 1 {
		t.Errorf("got records %+v for the task, want exactly one, run once", recs)
	}
	calls := map[string]int{}
	for _, c := range stub.Calls() {
		calls[c.Model]++
	}
	if len(calls) != 2 || calls["model-a"] != 1 || calls["model-b"] != 1 {
		t.Errorf("got LLM calls by model %v, want one per agent (model-a 1, model-b 1)", calls)
	}
	evs := stored(t, readBus(t, natsURL), ids[0], hasTerminal)
	if got := countKinds(evs); got[events.Submitted] != 1 || terminals(evs) != 1 {
		t.Errorf("got events %s, want one submitted and one terminal", kinds(evs))
	}
}

func TestRedeliveredEventIsOneDeliberation(t *testing.T) {
	t.Parallel()
	s := shared(t)
	_, url := llm(t)
	req := request(uniqueTask(t), url, "model-a")
	// Knative redelivers the same event (same source and id) after a lost reply.
	opts := rpcevents.CallOptions{ID: "event-" + uniqueTask(t)}
	first, err := s.submit(t, req, opts)
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.submit(t, req, opts)
	if err != nil {
		t.Fatal(err)
	}
	if first.GetDeliberationId() != second.GetDeliberationId() || !second.GetDuplicate() || first.GetDuplicate() {
		t.Fatalf("got %q (duplicate %v) then %q (duplicate %v), want the same id, the second marked duplicate",
			first.GetDeliberationId(), first.GetDuplicate(), second.GetDeliberationId(), second.GetDuplicate())
	}
	// Without a key or event identity reuse, ids are random and distinct.
	third, err := s.submit(t, req, rpcevents.CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if third.GetDeliberationId() == first.GetDeliberationId() {
		t.Errorf("a new event got the id of an earlier one")
	}
	s.waitDone(t, s.status.url, first.GetDeliberationId())
	s.waitDone(t, s.status.url, third.GetDeliberationId())
}

func TestRestartedStatusFunctionStillReports(t *testing.T) {
	t.Parallel()
	s := shared(t)
	stub, url := llm(t)
	stub.Script("slow", llmstub.Behavior{Delay: 5 * time.Second})
	resp, err := s.submit(t, request(uniqueTask(t), url, "slow", "slow-too"), rpcevents.CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetDeliberationId()
	first := start(t, "status")
	// Mid-deliberation: the first replica sees it pending or running.
	if st := s.statusOf(t, first.url, id).GetStatus(); st != "pending" && st != "running" {
		t.Fatalf("got status %q mid-deliberation, want pending or running", st)
	}
	first.stop(9) // SIGKILL: no goodbye, no state handed over
	second := start(t, "status")
	if st := s.statusOf(t, second.url, id).GetStatus(); st == "not_found" {
		t.Fatalf("restarted status function lost deliberation %s", id)
	}
	st := s.waitDone(t, second.url, id)
	if st.GetStatus() != "completed" || len(st.GetAgentResults()) != 2 || st.GetResult().GetProposal() == "" {
		t.Fatalf("got %v after restart, want completed with 2 agent results and a proposal", st)
	}
	// A third replica, started after the end, answers identically from the record alone.
	third := start(t, "status")
	again := s.statusOf(t, third.url, id)
	if again.GetStatus() != st.GetStatus() || again.GetResult().GetProposal() != st.GetResult().GetProposal() {
		t.Errorf("got %q/%q from a fresh replica, want %q/%q", again.GetStatus(), again.GetResult().GetProposal(),
			st.GetStatus(), st.GetResult().GetProposal())
	}
}

func TestShellMetacharactersReachTheLLMVerbatim(t *testing.T) {
	t.Parallel()
	s := shared(t)
	stub, url := llm(t)
	marker := t.TempDir() + "/pwned"
	desc := "Fix it: $(touch " + marker + ") `touch " + marker + "` ; touch " + marker +
		" && echo \"double\" 'single' | cat > " + marker + " \\ $HOME ${PATH} %s %d {task_id} \n second line\ttab ünïcødé 🚀"
	req := request(uniqueTask(t), url, "model-a")
	req.TaskDescription = desc
	resp, err := s.submit(t, req, rpcevents.CallOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st := s.waitDone(t, s.status.url, resp.GetDeliberationId())
	if st.GetStatus() != "completed" {
		t.Fatalf("got %q (%s), want completed", st.GetStatus(), st.GetErrorMessage())
	}
	calls := stub.Calls()
	if len(calls) != 1 {
		t.Fatalf("got %d LLM calls, want 1", len(calls))
	}
	var user string
	for _, m := range calls[0].Messages {
		if m.Role == "user" {
			user = m.Content
		}
	}
	if !strings.HasPrefix(user, desc) {
		t.Errorf("the LLM got user message %q, want it to start with the description byte for byte: %q", user, desc)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists (stat: %v): the description was run by a shell", marker, err)
	}
}

// Cancelling a running deliberation (its one agent's LLM call hangs) ends it cancelled
// within about a second: the executor stops the agent call, writes the record, and stores
// exactly one terminal event, cancelled. Cancelling it again changes nothing.
func TestCancelStopsARunningDeliberation(t *testing.T) {
	t.Parallel()
	s := shared(t)
	id := s.submitHanging(t, 300)
	if st := s.record(t, id).State; st != domain.StatusRunning {
		t.Fatalf("got record state %q with the agent's LLM call made, want running", st)
	}
	var cancel pb.CancelDeliberationResponse
	began := time.Now()
	if err := s.client.Call(context.Background(), s.execute.url, rpcevents.TypeCancelDeliberation,
		&pb.CancelDeliberationRequest{DeliberationId: id}, rpcevents.CallOptions{}, &cancel); err != nil {
		t.Fatalf("CancelDeliberation: %v", err)
	}
	if cancel.GetStatus() != "cancelled" {
		t.Errorf("got cancel status %q, want cancelled", cancel.GetStatus())
	}
	var rec domain.Record
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if rec = s.record(t, id); rec.Terminal() || time.Now().After(deadline) {
			break
		}
	}
	took := time.Since(began)
	if rec.State != domain.StatusCancelled {
		t.Fatalf("got record %+v after cancel, want cancelled", rec)
	}
	if took > 1500*time.Millisecond {
		t.Errorf("the running deliberation took %s to end cancelled, want about a second at most", took)
	}
	t.Logf("running deliberation cancelled in %s (CancelDeliberation answered %q)", took.Round(time.Millisecond), cancel.GetMessage())
	if st := s.waitDone(t, s.status.url, id); st.GetStatus() != "cancelled" {
		t.Errorf("got status %q after cancel, want cancelled", st.GetStatus())
	}
	if err := s.client.Call(context.Background(), s.execute.url, rpcevents.TypeCancelDeliberation,
		&pb.CancelDeliberationRequest{DeliberationId: id}, rpcevents.CallOptions{}, &cancel); err != nil || cancel.GetStatus() != "cancelled" {
		t.Errorf("second cancel: got %v %v, want cancelled (unchanged)", &cancel, err)
	}
	stored(t, readBus(t, natsURL), id, hasTerminal)
	time.Sleep(2 * time.Second) // a second terminal event, were one coming, would be stored by now
	evs := stored(t, readBus(t, natsURL), id, hasTerminal)
	if n := terminals(evs); n != 1 || !strings.HasSuffix(kinds(evs), string(events.Cancelled)) {
		t.Errorf("got events %s, want exactly one terminal event, cancelled", kinds(evs))
	}
	if rec.Outcome != nil {
		t.Errorf("got an outcome %+v for a cancelled deliberation, want none", rec.Outcome)
	}
	// Unknown ids are not found, for cancel as for status.
	err := s.client.Call(context.Background(), s.execute.url, rpcevents.TypeCancelDeliberation,
		&pb.CancelDeliberationRequest{DeliberationId: "delib-unknown"}, rpcevents.CallOptions{}, &cancel)
	if !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("got %v cancelling an unknown id, want ErrNotFound", err)
	}
}

func TestUnknownDeliberationIsNotFound(t *testing.T) {
	t.Parallel()
	s := shared(t)
	if got := s.statusOf(t, s.status.url, "delib-never-submitted").GetStatus(); got != "not_found" {
		t.Errorf("got %q, want not_found", got)
	}
	// An id this system could never have minted is not_found too (the original answered so
	// for every unknown id), without reaching Ray: "../../api/jobs" would otherwise name
	// Ray's job listing.
	if got := s.statusOf(t, s.status.url, "../../api/jobs").GetStatus(); got != "not_found" {
		t.Errorf("got %q for a foreign id, want not_found", got)
	}
	var resp pb.GetDeliberationStatusResponse
	err := s.client.Call(context.Background(), s.status.url, rpcevents.TypeGetDeliberationStatus,
		&pb.GetDeliberationStatusRequest{DeliberationId: strings.Repeat("x", domain.MaxLookupIDBytes+1)}, rpcevents.CallOptions{}, &resp)
	if !errors.Is(err, domain.ErrInvalid) || !strings.Contains(err.Error(), "deliberation_id") {
		t.Errorf("got %v for an oversize id, want ErrInvalid naming deliberation_id", err)
	}
}

func TestTwoExecuteProcessesGivenTheSameEventMakeOneDeliberation(t *testing.T) {
	t.Parallel()
	s := shared(t)
	other := start(t, "execute")
	_, url := llm(t)
	var ids []string
	for round := 0; round < 5; round++ {
		task := fmt.Sprintf("%s-%d", uniqueTask(t), round)
		req := request(task, url, "model-a")
		// Knative may deliver one event to two replicas at once (a retry racing a slow reply).
		opts := rpcevents.CallOptions{ID: "event-" + task}
		resps := make([]*pb.ExecuteDeliberationResponse, 2)
		errs := make([]error, 2)
		gate := make(chan struct{})
		var wg sync.WaitGroup
		for i, target := range []string{s.execute.url, other.url} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				var resp pb.ExecuteDeliberationResponse
				errs[i] = s.client.Call(context.Background(), target, rpcevents.TypeExecuteDeliberation, req, opts, &resp)
				resps[i] = &resp
			}()
		}
		close(gate)
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("round %d: %v / %v", round, errs[0], errs[1])
		}
		if resps[0].GetDeliberationId() != resps[1].GetDeliberationId() {
			t.Fatalf("round %d: the two processes answered %q and %q, want one deliberation", round,
				resps[0].GetDeliberationId(), resps[1].GetDeliberationId())
		}
		if resps[0].GetDuplicate() == resps[1].GetDuplicate() {
			t.Errorf("round %d: duplicate flags %v and %v, want exactly one submission", round,
				resps[0].GetDuplicate(), resps[1].GetDuplicate())
		}
		if n := len(s.recordsForTask(t, task)); n != 1 {
			t.Fatalf("round %d: %d records for one event, want exactly 1", round, n)
		}
		ids = append(ids, resps[0].GetDeliberationId())
	}
	for _, id := range ids {
		s.waitDone(t, s.status.url, id)
	}
}

// Prompt and completion text stay out of info-level logs: the functions' own, and the
// executor's Ray job log (its driver's and, forwarded by Ray, its replicas': the proposal
// is in the record, never in a log line). The LLM fails the first attempt, so the replica
// logs the retry at info (the default EXECUTOR_LOG_LEVEL logs no line for a deliberation
// that goes well): the job log is read once it names the deliberation.
func TestPromptsAndCompletionsStayOutOfInfoLogs(t *testing.T) {
	t.Parallel()
	stub, url := llm(t)
	secret := uniqueTask(t)
	stub.Script("model-secret", llmstub.Behavior{Status: http.StatusServiceUnavailable, FailTimes: 1,
		Content: "COMPLETION-" + secret, Reasoning: "REASONING-" + secret})
	execute, status := start(t, "execute"), start(t, "status")
	s := shared(t)
	req := request("task-"+secret, url, "model-secret")
	req.TaskDescription = "PROMPT-" + secret
	var resp pb.ExecuteDeliberationResponse
	if err := s.client.Call(context.Background(), execute.url, rpcevents.TypeExecuteDeliberation, req, rpcevents.CallOptions{}, &resp); err != nil {
		t.Fatal(err)
	}
	st := s.waitDone(t, status.url, resp.GetDeliberationId())
	if !strings.Contains(st.GetResult().GetProposal(), "COMPLETION-"+secret) {
		t.Fatalf("got proposal %q, want the scripted completion", st.GetResult().GetProposal())
	}
	if len(stub.Calls()) != 2 || !strings.Contains(fmt.Sprint(stub.Calls()[1].Messages), "PROMPT-"+secret) {
		t.Fatalf("the LLM got %d calls, want 2 with the prompt (a failed attempt and its retry)", len(stub.Calls()))
	}
	// The executor's log: the replica that ran it logs the retry with its id (Ray forwards
	// actor output to the job's driver log, a moment later).
	dep, _, err := s.store.Deploy(context.Background())
	if err != nil || dep.SubmissionID == "" {
		t.Fatalf("deploy key: %+v %v", dep, err)
	}
	var logs string
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(time.Second) {
		if logs, err = s.ray.Logs(context.Background(), dep.SubmissionID); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(logs, resp.GetDeliberationId()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the executor's log (%s) never named deliberation %s; its tail:\n%s", dep.SubmissionID,
				resp.GetDeliberationId(), logs[max(0, len(logs)-3000):])
		}
	}
	payloadLines := []string{logs}
	for what, out := range map[string]string{"execute": execute.out.String(), "status": status.out.String(),
		"executor (Ray job log)": strings.Join(payloadLines, "\n")} {
		for _, text := range []string{"PROMPT-", "COMPLETION-", "REASONING-"} {
			if strings.Contains(out, text+secret) {
				t.Errorf("%s logged %s text at info level", what, strings.TrimSuffix(text, "-"))
			}
		}
	}
}
