//go:build e2e && bench

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/executor/payload/bench"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
)

// TestExecutorReport (make bench) measures what issue 11 asks of the standing executor,
// against the original's execution model (shared/executor/payload/bench/baseline.py, run as a
// Ray job driver on the same head in the same run, adjacent to each executor figure):
//
//   - one-agent deliberations, one at a time, through the ingress: ExecuteDeliberation until
//     WatchDeliberation delivers the terminal event (EXEC_SINGLES, 30); the baseline's
//     driver runs BASE_SINGLES (20) of its own, timed inside the driver;
//   - a burst of EXEC_BURST (200) three-agent deliberations from 16 concurrent gRPC callers:
//     completed/s (first submit to the last record's ended_at) and accepted/s; the
//     baseline's burst is BASE_BURST (30) deliberations from 16 callers (it does ~0.4/s);
//   - the executor at idle: RSS and CPU of its job driver and Replica actors over 10 s,
//     before and after the load, found by their process titles and the NATS URL in their
//     environment.
//
// It fails only for a broken run (refused or failed deliberations, missing or duplicated
// terminal events, a failed baseline job), never for missing a target.
func TestExecutorReport(t *testing.T) {
	singles := scaleEnvInt(t, "EXEC_SINGLES", 30)
	burstN := scaleEnvInt(t, "EXEC_BURST", 200)
	callers := scaleEnvInt(t, "EXEC_CALLERS", 16)
	baseSingles := scaleEnvInt(t, "BASE_SINGLES", 20)
	baseBurst := scaleEnvInt(t, "BASE_BURST", 30)
	idle := time.Duration(scaleEnvInt(t, "EXEC_IDLE_SECONDS", 10)) * time.Second

	s := shared(t)
	stub, llmURL := llm(t)
	// The per-caller submit limits (50/s, burst 100) would make accepted/s a figure of the
	// limiter: lifted for this ingress, whose own cost is measured.
	client, _ := startIngress(t, s.execute.url, s.status.url, s.list.url,
		"CALLER_SUBMIT_RATE=1000000", "CALLER_SUBMIT_BURST=1000000", "CALLER_MAX_INFLIGHT=1024")
	run := uniqueTask(t)
	var ids []string // every deliberation this test submitted
	ctx := context.Background()
	load := map[string]string{"start": execLoadavg()}

	// Warm-up: connections, the replicas' first LLM session (not counted).
	for i := 0; i < 3; i++ {
		id, kind, _, err := execOneAgent(ctx, client, request(fmt.Sprintf("%s-warm-%d", run, i), llmURL, "m"))
		if err != nil || kind != string(events.Completed) {
			t.Fatalf("warm-up deliberation %s: %s, %v", id, kind, err)
		}
		ids = append(ids, id)
	}
	idleBefore := executorFootprint(t, s.natsURL, idle)
	load["idle_before"] = execLoadavg()

	// 1. One-agent deliberations, one at a time.
	var lat []time.Duration
	for i := 0; i < singles; i++ {
		id, kind, d, err := execOneAgent(ctx, client, request(fmt.Sprintf("%s-single-%03d", run, i), llmURL, "m"))
		if err != nil {
			t.Fatalf("one-agent deliberation %d (%s): %v", i, id, err)
		}
		ids = append(ids, id)
		if kind != string(events.Completed) {
			t.Errorf("one-agent deliberation %s ended %s", id, kind)
			continue
		}
		lat = append(lat, d)
	}
	slices.Sort(lat)
	load["singles"] = execLoadavg()

	// 2. The baseline, adjacent: one driver job on the same head, same LLM stand-in.
	base := runBaseline(t, s, llmURL, baseSingles, baseBurst, callers)
	load["baseline"] = execLoadavg()

	// 3. The burst: 200 three-agent deliberations from 16 callers through the ingress.
	b := execBurst(t, client, llmURL, run, burstN, callers)
	ids = append(ids, b.ids...)
	load["burst"] = execLoadavg()

	// Every deliberation ended completed, with exactly one terminal event.
	ended := waitEnded(t, s, ids, 5*time.Minute)
	var lastEnd time.Time
	var burstLat []time.Duration
	for _, id := range b.ids {
		e := ended[id]
		lastEnd = execLater(lastEnd, e)
		burstLat = append(burstLat, e.Sub(b.submitted[id]))
	}
	slices.Sort(burstLat)
	dupes, missing := 0, 0
	for _, id := range ids {
		evs, err := s.bus.Stored(ctx, id)
		if err != nil {
			t.Fatalf("events of %s: %v", id, err)
		}
		switch n := terminals(evs); {
		case n == 0:
			missing++
		case n > 1:
			dupes++
			t.Errorf("deliberation %s has %d terminal events: %s", id, n, kinds(evs))
		}
	}
	if missing > 0 {
		t.Errorf("%d deliberations have no terminal event", missing)
	}
	completedPerS := float64(len(b.ids)) / lastEnd.Sub(b.first).Seconds()

	time.Sleep(2 * time.Second) // the replicas' last acks and heartbeats
	idleAfter := executorFootprint(t, s.natsURL, idle)
	load["end"] = execLoadavg()

	// The report.
	p50, p90 := execPct(lat, 0.50), execPct(lat, 0.90)
	r := executorReport{
		Date: time.Now().UTC().Format(time.RFC3339), CPUs: runtime.NumCPU(), Load: load,
		Singles: len(lat), SingleP50ms: ms(p50), SingleP90ms: ms(p90), SingleP99ms: ms(execPct(lat, 0.99)),
		BaseSingles: base.Single.N, BaseSingleP50ms: base.Single.P50, BaseSingleP90ms: base.Single.P90,
		Burst: len(b.ids), Callers: callers, CompletedPerS: completedPerS, AcceptedPerS: b.acceptedPerS,
		SubmitP50ms: ms(execPct(b.submitLat, 0.5)), SubmitP99ms: ms(execPct(b.submitLat, 0.99)), Refusals: b.refusals,
		BurstP50ms: ms(execPct(burstLat, 0.5)), BurstP99ms: ms(execPct(burstLat, 0.99)),
		BaseBurst: base.Burst.Deliberations, BaseCompletedPerS: base.Burst.CompletedPerS,
		BaseBurstP50ms: base.Burst.P50, BaseAgentCallsAtLeast: base.AgentCalls,
		IdleBefore: idleBefore, IdleAfter: idleAfter, LLMCalls: len(stub.Calls()), DuplicateTerminals: dupes,
	}
	if r.SingleP50ms > 0 {
		r.SingleSpeedup = r.BaseSingleP50ms / r.SingleP50ms
	}
	if r.BaseCompletedPerS > 0 {
		r.ThroughputRatio = r.CompletedPerS / r.BaseCompletedPerS
	}
	report := r.markdown()
	t.Log("\n" + report)
	line, _ := json.Marshal(r)
	t.Log("EXECUTOR_REPORT " + string(line))
	if out := os.Getenv("EXEC_REPORT_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(report+"\nEXECUTOR_REPORT "+string(line)+"\n"), 0o644); err != nil {
			t.Error(err)
		}
	}
	if want := len(ids) - burstN + 3*burstN; r.LLMCalls < want+base.AgentCalls {
		t.Errorf("the LLM stand-in answered %d calls, want at least %d (executor) + %d (baseline)", r.LLMCalls, want, base.AgentCalls)
	}
}

// execOneAgent submits req through the ingress and watches it to its terminal event: the
// time from the submit to the terminal event's arrival.
func execOneAgent(ctx context.Context, client pb.RayExecutorServiceClient, req *pb.ExecuteDeliberationRequest) (id, kind string, d time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	resp, err := client.ExecuteDeliberation(ctx, req)
	if err != nil {
		return "", "", 0, err
	}
	id = resp.GetDeliberationId()
	ws, err := client.WatchDeliberation(ctx, &pb.WatchDeliberationRequest{DeliberationId: id})
	if err != nil {
		return id, "", 0, err
	}
	for {
		r, err := ws.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the watch ended without a terminal event")
			}
			return id, "", 0, err
		}
		if k := events.Kind(r.GetEvent().GetKind()); k.Terminal() {
			return id, string(k), time.Since(t0), nil
		}
	}
}

type burstResult struct {
	ids          []string
	submitted    map[string]time.Time // when the submit of each began
	first        time.Time
	acceptedPerS float64
	submitLat    []time.Duration
	refusals     int
}

// execBurst submits n three-agent deliberations from callers concurrent gRPC callers, each
// back to back (a refused call is retried with its idempotency key).
func execBurst(t *testing.T, client pb.RayExecutorServiceClient, llmURL, run string, n, callers int) burstResult {
	t.Helper()
	res := burstResult{submitted: map[string]time.Time{}}
	var (
		mu       sync.Mutex
		next     int
		failures []string
		wg       sync.WaitGroup
	)
	res.first = time.Now()
	for w := 0; w < callers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				task := fmt.Sprintf("%s-burst-%03d", run, i)
				req := request(task, llmURL, "m1", "m2", "m3")
				ctx := metadata.AppendToOutgoingContext(context.Background(), "idempotency-key", task)
				began := time.Now()
				for attempt := 0; ; attempt++ {
					t0 := time.Now()
					cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					resp, err := client.ExecuteDeliberation(cctx, req)
					cancel()
					d := time.Since(t0)
					mu.Lock()
					switch {
					case err == nil:
						res.ids = append(res.ids, resp.GetDeliberationId())
						res.submitted[resp.GetDeliberationId()] = began
						res.submitLat = append(res.submitLat, d)
					case execRetryable(err) && attempt < 100:
						res.refusals++
					default:
						failures = append(failures, fmt.Sprintf("%s: %v", task, err))
					}
					mu.Unlock()
					if err == nil || !execRetryable(err) || attempt >= 100 {
						break
					}
					time.Sleep(time.Duration(20*(attempt+1)) * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	window := time.Since(res.first)
	if len(failures) > 0 {
		t.Fatalf("%d submissions failed for good, e.g. %s", len(failures), failures[0])
	}
	if len(res.ids) != n {
		t.Fatalf("accepted %d of %d", len(res.ids), n)
	}
	res.acceptedPerS = float64(n) / window.Seconds()
	slices.Sort(res.submitLat)
	return res
}

func execRetryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.ResourceExhausted:
		return true
	}
	return false
}

// waitEnded waits until every deliberation's record is terminal and returns when each
// ended (the record's ended_at, written by the executor on this machine's clock). A
// deliberation that did not complete is an error.
func waitEnded(t *testing.T, s *system, ids []string, within time.Duration) map[string]time.Time {
	t.Helper()
	ended := map[string]time.Time{}
	deadline := time.Now().Add(within)
	for {
		for _, id := range ids {
			if _, ok := ended[id]; ok {
				continue
			}
			r, _, err := s.store.Get(context.Background(), id)
			if err != nil {
				t.Fatalf("record %s: %v", id, err)
			}
			if !r.State.Terminal() {
				continue
			}
			if r.State != domain.StatusCompleted {
				t.Errorf("deliberation %s ended %s: %s", id, r.State, r.Error)
			}
			ended[id] = domain.ParseTime(r.EndedAt)
		}
		if len(ended) == len(ids) {
			return ended
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d deliberations did not end within %s", len(ids)-len(ended), len(ids), within)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func execLater(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// baselineResult is the part of bench/baseline_report.py's result line the report uses.
type baselineResult struct {
	Single struct {
		N      int     `json:"n"`
		P50    float64 `json:"p50_ms"`
		P90    float64 `json:"p90_ms"`
		Failed int     `json:"failed"`
		Errors []string
	} `json:"single"`
	Burst struct {
		Deliberations int      `json:"deliberations"`
		Completed     int      `json:"completed"`
		Failed        int      `json:"failed"`
		Errors        []string `json:"errors"`
		Seconds       float64  `json:"seconds"`
		CompletedPerS float64  `json:"completed_per_s"`
		P50           float64  `json:"p50_ms"`
	} `json:"burst"`
	AgentCalls int `json:"agent_calls_at_least"`
}

// runBaseline runs the original's model as a Ray job driver on the same head
// (bench.Run: the Jobs REST API with the token, bench/ and the payload as working_dir).
func runBaseline(t *testing.T, s *system, llmURL string, singles, burst, callers int) baselineResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	entry := fmt.Sprintf("python -u -m bench.baseline_report --llm-url %s --singles %d --deliberations %d --callers %d --agents 3",
		llmURL, singles, burst, callers)
	logs, err := bench.Run(ctx, s.ray, bench.Job{Entrypoint: entry, IDPrefix: "bench-baseline",
		Metadata: map[string]string{"purpose": "baseline of TestExecutorReport (issue 11)"}, Logf: t.Logf})
	if err != nil {
		t.Fatalf("baseline job: %v", err)
	}
	raw, ok := bench.ResultLine(logs, "BENCH_BASELINE_RESULT")
	if !ok {
		t.Fatalf("the baseline printed no result; last log lines:\n%s", bench.Tail(logs, 40))
	}
	var r baselineResult
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		t.Fatalf("baseline result: %v", err)
	}
	if r.Single.Failed > 0 || r.Burst.Failed > 0 || r.Burst.Completed != burst {
		t.Errorf("the baseline failed %d singles and %d of its burst (%d/%d completed): %v %v",
			r.Single.Failed, r.Burst.Failed, r.Burst.Completed, burst, r.Single.Errors, r.Burst.Errors)
	}
	return r
}

// execFootprint is the executor's processes on this machine over an idle window.
type execFootprint struct {
	Processes map[string]int `json:"processes"` // role -> count
	RSSMiB    float64        `json:"rss_mib"`   // total, driver + replicas
	RolesMiB  map[string][]float64
	CPUPct    float64 `json:"cpu_pct"` // of one core, over the window
	Seconds   float64 `json:"seconds"`
}

type execProc struct {
	pid    int
	role   string
	rssKiB int
	ticks  int64
}

// executorFootprint finds the executor bound to natsURL on this machine (its job driver
// "python -m ray_executor_payload.executor", the shell Ray starts it with, and its
// "ray::ReplicaBody" actors, each with
// RAY_EXECUTOR_NATS_URL=natsURL in its environment) and measures them over window.
func executorFootprint(t *testing.T, natsURL string, window time.Duration) execFootprint {
	t.Helper()
	before := execProcs(natsURL)
	time.Sleep(window)
	after := execProcs(natsURL)
	if len(after) == 0 {
		t.Fatalf("no executor process of %s found on this machine", natsURL)
	}
	fp := execFootprint{Processes: map[string]int{}, RolesMiB: map[string][]float64{}, Seconds: window.Seconds()}
	var ticks int64
	for pid, a := range after {
		fp.Processes[a.role]++
		mib := float64(a.rssKiB) / 1024
		fp.RSSMiB += mib
		fp.RolesMiB[a.role] = append(fp.RolesMiB[a.role], mib)
		if b, ok := before[pid]; ok {
			ticks += a.ticks - b.ticks
		}
	}
	fp.CPUPct = 100 * float64(ticks) / 100 / window.Seconds() // USER_HZ is 100 on Linux
	return fp
}

func execProcs(natsURL string) map[int]execProc {
	out := map[int]execProc{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	want := []byte("\x00" + natsbus.PayloadURLEnv + "=" + natsURL + "\x00")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(d + "/cmdline")
		if err != nil {
			continue
		}
		c := string(bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}))
		role := ""
		switch {
		case strings.HasPrefix(c, "/bin/sh ") || strings.HasPrefix(c, "sh "):
			role = "shell" // Ray runs the job's entrypoint through a shell
		case strings.HasPrefix(c, "ray::Replica"):
			role = "replica"
		case strings.Contains(c, "ray_executor_payload.executor"):
			role = "driver"
		default:
			continue
		}
		env, err := os.ReadFile(d + "/environ")
		if err != nil || !bytes.Contains(append([]byte{0}, env...), want) {
			continue
		}
		p := execProc{pid: pid, role: role}
		if st, err := os.ReadFile(d + "/status"); err == nil {
			for _, line := range strings.Split(string(st), "\n") {
				if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
					p.rssKiB, _ = strconv.Atoi(strings.Fields(v)[0])
				}
			}
		}
		if st, err := os.ReadFile(d + "/stat"); err == nil {
			if i := bytes.LastIndexByte(st, ')'); i > 0 {
				f := strings.Fields(string(st[i+1:]))
				if len(f) > 12 {
					u, _ := strconv.ParseInt(f[11], 10, 64)
					s, _ := strconv.ParseInt(f[12], 10, 64)
					p.ticks = u + s
				}
			}
		}
		out[pid] = p
	}
	return out
}

func execLoadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

type executorReport struct {
	Date               string            `json:"date"`
	CPUs               int               `json:"cpus"`
	Load               map[string]string `json:"loadavg"`
	Singles            int               `json:"singles"`
	SingleP50ms        float64           `json:"single_p50_ms"`
	SingleP90ms        float64           `json:"single_p90_ms"`
	SingleP99ms        float64           `json:"single_p99_ms"`
	BaseSingles        int               `json:"baseline_singles"`
	BaseSingleP50ms    float64           `json:"baseline_single_p50_ms"`
	BaseSingleP90ms    float64           `json:"baseline_single_p90_ms"`
	SingleSpeedup      float64           `json:"single_p50_speedup"`
	Burst              int               `json:"burst"`
	Callers            int               `json:"callers"`
	CompletedPerS      float64           `json:"completed_per_s"`
	AcceptedPerS       float64           `json:"accepted_per_s"`
	SubmitP50ms        float64           `json:"submit_p50_ms"`
	SubmitP99ms        float64           `json:"submit_p99_ms"`
	Refusals           int               `json:"refusals"`
	BurstP50ms         float64           `json:"burst_submit_to_end_p50_ms"`
	BurstP99ms         float64           `json:"burst_submit_to_end_p99_ms"`
	BaseBurst          int               `json:"baseline_burst"`
	BaseCompletedPerS  float64           `json:"baseline_completed_per_s"`
	BaseBurstP50ms     float64           `json:"baseline_burst_p50_ms"`
	ThroughputRatio    float64           `json:"throughput_ratio"`
	IdleBefore         execFootprint     `json:"idle_before_load"`
	IdleAfter          execFootprint     `json:"idle_after_load"`
	LLMCalls           int               `json:"llm_calls"`
	DuplicateTerminals int               `json:"duplicate_terminals"`

	BaseAgentCallsAtLeast int `json:"baseline_agent_calls"`
}

func execMet(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func (r executorReport) markdown() string {
	var b strings.Builder
	var loads []string
	for _, phase := range []string{"start", "idle_before", "singles", "baseline", "burst", "end"} {
		loads = append(loads, phase+" "+r.Load[phase])
	}
	fmt.Fprintf(&b, "Standing executor vs the original's model (baseline), %s, %d CPUs; load average (1/5/15 min) after each phase: %s\n\n",
		r.Date, r.CPUs, strings.Join(loads, "; "))
	b.WriteString("| figure | standing executor | baseline (actor per agent) | ratio | target | |\n|---|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| one-agent submit → completed p50 (%d / %d sequential) | %.1f ms | %.0f ms | %.1f× | ≤ 150 ms and ≥ 10× | %s |\n",
		r.Singles, r.BaseSingles, r.SingleP50ms, r.BaseSingleP50ms, r.SingleSpeedup,
		execMet(r.SingleP50ms <= 150 && r.SingleSpeedup >= 10))
	fmt.Fprintf(&b, "| one-agent p90 | %.1f ms | %.0f ms | %.1f× | | |\n", r.SingleP90ms, r.BaseSingleP90ms, r.BaseSingleP90ms/r.SingleP90ms)
	fmt.Fprintf(&b, "| three-agent burst from %d callers: completed/s (first submit → last end) | %.1f (%d) | %.2f (%d) | %.0f× | ≥ 10× | %s |\n",
		r.Callers, r.CompletedPerS, r.Burst, r.BaseCompletedPerS, r.BaseBurst, r.ThroughputRatio, execMet(r.ThroughputRatio >= 10))
	fmt.Fprintf(&b, "| burst: submit → end per deliberation p50 / p99 | %.0f / %.0f ms | p50 %.0f ms | | | |\n", r.BurstP50ms, r.BurstP99ms, r.BaseBurstP50ms)
	fmt.Fprintf(&b, "| burst: accepted/s (submit RPCs through the ingress) | %.0f (submit p50 %.1f ms, p99 %.1f ms, %d refusals) | – | | ≥ 500 | %s |\n",
		r.AcceptedPerS, r.SubmitP50ms, r.SubmitP99ms, r.Refusals, execMet(r.AcceptedPerS >= 500))
	for _, row := range []struct {
		name string
		fp   execFootprint
	}{{"before the load", r.IdleBefore}, {"after the load", r.IdleAfter}} {
		fmt.Fprintf(&b, "| executor idle %s: RSS, CPU over %.0f s | %.0f MiB (%s), %.2f%% of a core | none standing | | | |\n",
			row.name, row.fp.Seconds, row.fp.RSSMiB, execProcsDesc(row.fp), row.fp.CPUPct)
	}
	fmt.Fprintf(&b, "\nDuplicate terminal events: %d. LLM calls answered: %d.\n", r.DuplicateTerminals, r.LLMCalls)
	return b.String()
}

func execProcsDesc(fp execFootprint) string {
	var parts []string
	for _, role := range []string{"shell", "driver", "replica"} {
		var xs []string
		for _, m := range fp.RolesMiB[role] {
			xs = append(xs, fmt.Sprintf("%.0f", m))
		}
		if len(xs) > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", role, strings.Join(xs, "+")))
		}
	}
	return strings.Join(parts, ", ")
}

// execPct is the nearest-rank p-quantile of sorted durations.
func execPct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[max(0, int(math.Ceil(p*float64(len(sorted))))-1)]
}
