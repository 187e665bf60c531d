//go:build bench

// Package bench holds the execution-model benchmark of issue 11: a Python Ray job driver
// (python -m bench, in this folder) and this Go report that runs it the way the gateway
// runs work on Ray: the Jobs REST API with the cluster's token, the code shipped as a GCS
// working_dir package, an LLM stand-in over HTTP.
//
//	make bench-models
//	  = go test -tags bench -count=1 -timeout 120m -run TestExecutionModelsReport -v ./shared/executor/payload/bench/
//
// Knobs: RAY_ADDRESS and RAY_AUTH_TOKEN(_FILE) as for the functions; BENCH_MODELS_ARGS
// (extra arguments for the driver, e.g. "--rounds 1 --deliberations 50"); BENCH_LLM_HOST
// (the address the stand-in listens on and the Ray workers call, 127.0.0.1);
// BENCH_MODELS_OUT (a file to write the markdown table and the raw JSON to).
package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/ray"
)

// resultMarker starts the driver's last stdout line (execution_models.RESULT_MARKER).
const resultMarker = "BENCH_MODELS_RESULT"

// row is one line of the driver's summary (execution_models.summarize).
type row struct {
	SingleP50       *float64  `json:"single_p50_ms"`
	SingleP99       *float64  `json:"single_p99_ms"`
	SingleN         int       `json:"single_n"`
	BurstPerS       *float64  `json:"burst_completed_per_s"`
	BurstPerSRange  []float64 `json:"burst_completed_per_s_range"`
	BurstP50        *float64  `json:"burst_p50_ms"`
	BurstP99        *float64  `json:"burst_p99_ms"`
	MachineCPU      *float64  `json:"machine_cpu_ms_per_delib"`
	ModelCPU        *float64  `json:"model_cpu_ms_per_delib"`
	Failed          int       `json:"failed"`
	Speedup         *float64  `json:"single_p50_speedup"`
	ThroughputRatio *float64  `json:"burst_throughput_ratio"`
	RatioRange      []float64 `json:"burst_throughput_ratio_range"`
	StartupS        *float64  `json:"startup_s"`
	IdleRSS         *float64  `json:"idle_rss_mib"`
	IdleRSSAfter    *float64  `json:"idle_after_load_rss_mib"`
	IdleCPU         *float64  `json:"idle_cpu_pct"`
	Processes       int       `json:"processes"`
	AgentActorRSS   *float64  `json:"agent_actor_rss_mib"`
	StartS          *float64  `json:"start_s"` // serve-controller only
}

type result struct {
	Date    string `json:"date"`
	Ray     string `json:"ray_version"`
	Python  string `json:"python"`
	Serve   string `json:"serve"`
	Machine struct {
		CPUs        int     `json:"cpus"`
		ClusterCPUs float64 `json:"cluster_cpus"`
		Platform    string  `json:"platform"`
	} `json:"machine"`
	Config struct {
		Rounds        int `json:"rounds"`
		Singles       int `json:"singles"`
		Deliberations int `json:"deliberations"`
		Callers       int `json:"callers"`
		Agents        int `json:"agents"`
		Pool          int `json:"pool"`
		BurstRepeats  int `json:"burst_repeats"`
	} `json:"config"`
	AutoscalingConfig map[string]any `json:"autoscaling_config"`
	Rounds            []struct {
		LoadStart *float64                   `json:"loadavg_start"`
		LoadEnd   *float64                   `json:"loadavg_end"`
		Burst     map[string]json.RawMessage `json:"burst"`
	} `json:"rounds"`
	Summary    map[string]row `json:"summary"`
	Autoscale  map[string]any `json:"autoscale"`
	AgentCalls int            `json:"agent_calls_at_least"`
}

// rowOrder is the table's order; rows the run did not measure (no ray[serve]) are left out.
var rowOrder = []string{"baseline", "actors-agent", "actors-delib", "serve-agent", "serve-delib", "serve-auto-delib"}

var rowLabel = map[string]string{
	"baseline":         "baseline: one actor per agent, killed after (the original)",
	"actors-agent":     "plain async actors, one call per agent",
	"actors-delib":     "plain async actors, one call per deliberation",
	"serve-agent":      "Serve (fixed replicas), one call per agent",
	"serve-delib":      "Serve (fixed replicas), one call per deliberation",
	"serve-auto-delib": "Serve (autoscaling, starts at min), one call per deliberation",
}

func TestExecutionModelsReport(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout(t))
	defer cancel()

	rd := config.NewReader(os.Getenv)
	rc := config.ReadRay(rd)
	if err := rd.Err(); err != nil {
		t.Fatal(err)
	}
	client, err := ray.NewFromConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Version(ctx); err != nil {
		// A benchmark without its Ray head measured nothing: fail, never skip.
		t.Fatalf("no usable Ray head at %s (%v): run `make bench-models`, which starts one, or `make ray-up`", rc.Address, err)
	}

	stub := llmstub.New()
	ln, err := net.Listen("tcp", net.JoinHostPort(cmp.Or(os.Getenv("BENCH_LLM_HOST"), "127.0.0.1"), "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: stub, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	llmURL := "http://" + ln.Addr().String()

	entrypoint := "python -u -m bench --llm-url " + llmURL
	if extra := strings.TrimSpace(os.Getenv("BENCH_MODELS_ARGS")); extra != "" {
		entrypoint += " " + extra
	}
	started := time.Now()
	logs, err := Run(ctx, client, Job{Entrypoint: entrypoint, IDPrefix: "bench-models",
		Metadata: map[string]string{"purpose": "bench-models (issue 11)"}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	raw, ok := ResultLine(logs, resultMarker)
	if !ok {
		t.Fatalf("the driver printed no %q line; last log lines:\n%s", resultMarker, Tail(logs, 40))
	}
	var res result
	if err := json.Unmarshal([]byte(raw), &res); err != nil {
		t.Fatalf("result line: %v", err)
	}

	report := markdown(res, time.Since(started))
	t.Log("\n" + report)
	if out := os.Getenv("BENCH_MODELS_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(report+"\n\n```json\n"+raw+"\n```\n"), 0o644); err != nil {
			t.Error(err)
		}
	}

	// The stand-in saw the calls the driver says it made: no model skipped the LLM.
	failed := 0
	for _, r := range res.Summary {
		failed += r.Failed
	}
	if got := len(stub.Calls()); failed == 0 && got != res.AgentCalls {
		t.Errorf("the LLM stand-in answered %d calls, the driver made %d", got, res.AgentCalls)
	}
	if failed > 0 {
		t.Errorf("%d deliberations failed (see the JSON result's errors)", failed)
	}
}

// testTimeout leaves a minute of the test binary's -timeout to stop the job and report.
func testTimeout(t *testing.T) time.Duration {
	if d, ok := t.Deadline(); ok {
		return time.Until(d) - time.Minute
	}
	return 2 * time.Hour
}

func f(p *float64, format string) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf(format, *p)
}

func span(r []float64, format string) string {
	if len(r) != 2 {
		return ""
	}
	return fmt.Sprintf(" ("+format+"–"+format+")", r[0], r[1])
}

// markdown renders the result as the BENCHMARKS.md table and its notes.
func markdown(res result, took time.Duration) string {
	var b strings.Builder
	c := res.Config
	fmt.Fprintf(&b, "Run %s, Ray %s, Python %s, %d CPUs (Ray head: %g CPUs), %s; %d rounds, %.0f min.\n",
		res.Date, res.Ray, res.Python, res.Machine.CPUs, res.Machine.ClusterCPUs, res.Machine.Platform, c.Rounds, took.Minutes())
	fmt.Fprintf(&b, "Pool and fixed Serve replicas: %d. One-agent deliberations: %d per row per round, interleaved. "+
		"Burst: %d deliberations of %d agents from %d concurrent callers, per round once for the baseline and %d times "+
		"for each other row (around the baseline's); figures are medians, the range of completed/s over every burst in brackets. "+
		"Ratios: median over the rounds of each round's ratio against that round's baseline (range in brackets).\n\n",
		c.Pool, c.Singles, c.Deliberations, c.Agents, c.Callers, c.BurstRepeats)
	b.WriteString("| row | one-agent p50 | p99 | p50 vs baseline | burst completed/s | vs baseline | per deliberation p50 | p99 " +
		"| CPU per deliberation: machine (driver + standing) | start-up | standing processes, idle RSS | idle CPU | failed |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, key := range rowOrder {
		r, ok := res.Summary[key]
		if !ok {
			continue
		}
		speed, ratio, startup, rss, cpu := "1×", "1×", "none", "", "-"
		if key == "baseline" {
			rss = fmt.Sprintf("none (each agent: a %s MiB actor while it lives)", f(r.AgentActorRSS, "%.0f"))
		} else {
			speed = f(r.Speedup, "%.0f×")
			ratio = f(r.ThroughputRatio, "%.0f×") + span(r.RatioRange, "%.0f")
			startup = f(r.StartupS, "%.1f s")
			rss = fmt.Sprintf("%d, %s MiB (%s after the burst)", r.Processes, f(r.IdleRSS, "%.0f"), f(r.IdleRSSAfter, "%.0f"))
			cpu = f(r.IdleCPU, "%.1f%%")
		}
		fmt.Fprintf(&b, "| %s | %s ms | %s ms | %s | %s%s | %s | %s ms | %s ms | %s ms (%s ms) | %s | %s | %s | %d |\n",
			rowLabel[key], f(r.SingleP50, "%.1f"), f(r.SingleP99, "%.1f"), speed,
			f(r.BurstPerS, "%.2f"), span(r.BurstPerSRange, "%.2f"), ratio,
			f(r.BurstP50, "%.0f"), f(r.BurstP99, "%.0f"), f(r.MachineCPU, "%.1f"), f(r.ModelCPU, "%.1f"),
			startup, rss, cpu, r.Failed)
	}
	if ctl, ok := res.Summary["serve-controller"]; ok {
		fmt.Fprintf(&b, "\nServe controller (one per cluster, on top of the replicas): %s MiB RSS, %s of a core at idle, %s to start.\n",
			f(ctl.IdleRSS, "%.0f"), f(ctl.IdleCPU, "%.1f%%"), f(ctl.StartS, "%.1f s"))
	} else {
		fmt.Fprintf(&b, "\nServe: %s.\n", res.Serve)
	}
	if res.Autoscale != nil {
		a, _ := json.Marshal(res.Autoscale)
		fmt.Fprintf(&b, "\nAutoscaling observation (config %v): %s\n", res.AutoscalingConfig, a)
	}
	var loads []string
	for _, r := range res.Rounds {
		loads = append(loads, fmt.Sprintf("%s→%s", f(r.LoadStart, "%.1f"), f(r.LoadEnd, "%.1f")))
	}
	fmt.Fprintf(&b, "\nLoad average (1 min) at the start and end of each round: %s.\n", strings.Join(loads, ", "))
	return b.String()
}
