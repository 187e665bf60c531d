//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// One deliberation, one connected trace (issue 14): the whole stack exports to a real OTLP
// receiver (bin/otlp-sink, the Collector's own receiver), and the trace a caller starts runs
// from the ingress's RPC through the function, the work queue and the executor on Ray to
// the LLM request, whose traceparent the stand-in records. Every process also serves its
// metrics as Prometheus text on its metrics port, and the executor's reach the receiver.
func TestOneDeliberationIsOneConnectedTrace(t *testing.T) {
	t.Parallel()
	sink := testenv.StartOTLPSink(t)
	stub, llmURL := llm(t)
	srv, err := natslocal.Start(fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)), filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	t.Cleanup(func() {
		if err := stopExecutors(srv.URL()); err != nil {
			t.Errorf("stopping the executor of %s: %v", srv.URL(), err)
		}
	})
	const internal = "internal-telemetry-0123456789abcdef"
	const alice = "alice-telemetry-0123456789abcdef"
	ports := map[string]int{}
	startTraced := func(name string, extra ...string) *proc {
		ports[name] = testenv.FreePort(t)
		env := append([]string{"NATS_URL=" + srv.URL(), "INTERNAL_TOKEN=" + internal, fmt.Sprintf("METRICS_PORT=%d", ports[name])}, sink.Env()...)
		return start(t, name, append(env, extra...)...)
	}
	s := &system{execute: startTraced("execute"), status: startTraced("status"), list: startTraced("list", "RECONCILE_INTERVAL=5s"),
		ray: rayClient(t), natsURL: srv.URL()}
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("alice "+alice+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ports["ingress"] = testenv.FreePort(t)
	addr, _ := startGuardedIngressFor(t, s, srv.URL(), append([]string{"AUTH_TOKENS_FILE=" + tokens, "INTERNAL_TOKEN=" + internal,
		fmt.Sprintf("METRICS_PORT=%d", ports["ingress"])}, sink.Env()...)...)
	client := pb.NewRayExecutorServiceClient(dialIngress(t, addr, insecure.NewCredentials()))

	// The caller starts the trace.
	const traceID, root = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"
	ctx := metadata.AppendToOutgoingContext(bearer(alice), "traceparent", "00-"+traceID+"-"+root+"-01")
	const secret = "PROMPT-THAT-MUST-NOT-BE-TRACED"
	// A second agent whose LLM refuses: the deliberation still completes, and the executor
	// counts the failed attempts.
	stub.Script("m-refuses", llmstub.Behavior{Status: http.StatusBadRequest})
	req := request(uniqueTask(t), llmURL+"/v1", "m1", "m-refuses")
	req.TaskDescription = secret
	resp, err := client.ExecuteDeliberation(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetDeliberationId()
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		st, err := client.GetDeliberationStatus(bearer(alice), &pb.GetDeliberationStatusRequest{DeliberationId: id})
		if err != nil {
			t.Fatal(err)
		}
		if domain.Status(st.GetStatus()).Terminal() {
			if st.GetStatus() != "completed" {
				t.Fatalf("the deliberation ended %s", st.GetStatus())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deliberation is still %s", st.GetStatus())
		}
	}

	// The LLM request carried a traceparent of the caller's trace.
	var llmParent string
	for _, c := range stub.Calls() {
		if c.Model == "m1" && strings.Contains(c.Traceparent, traceID) {
			llmParent = strings.Split(c.Traceparent, "-")[2]
		}
	}
	if llmParent == "" {
		t.Fatalf("no LLM request carried the trace %s: %+v", traceID, stub.Calls())
	}
	// The receiver holds the span the LLM request names, and its ancestors lead back,
	// through the executor, the work queue and execute, to the ingress's RPC and the caller.
	spans := sink.WaitSpans(t, func(all []testenv.Span) bool {
		return chain(all, traceID, llmParent, root) != nil
	}, 60*time.Second)
	path := chain(spans, traceID, llmParent, root)
	services := map[string]bool{}
	var names []string
	for _, sp := range path {
		services[sp.ServiceName] = true
		names = append(names, sp.ServiceName+":"+sp.Name)
	}
	for _, want := range []string{"ray-executor-ingress", "ray-executor-execute", "ray-executor-executor"} {
		if !services[want] {
			t.Errorf("the path from the LLM request to the caller passes no span of %s: %v", want, names)
		}
	}
	t.Logf("LLM request → caller: %s", strings.Join(names, " → "))
	// Spans say which deliberation, whose, and how it ended; none holds the prompt.
	var annotated bool
	for _, sp := range sink.SpansOfTrace(traceID) {
		for k, v := range sp.Attributes {
			if strings.Contains(v, secret) {
				t.Errorf("span %s:%s attribute %s holds the prompt", sp.ServiceName, sp.Name, k)
			}
		}
		if sp.ServiceName == "ray-executor-ingress" && sp.Kind == "Server" {
			annotated = sp.Attributes["deliberation.id"] == id && sp.Attributes["caller"] == "alice" && sp.Attributes["outcome"] == "OK"
		}
	}
	if !annotated {
		t.Error("the ingress's server span does not name the deliberation, the caller and the outcome")
	}

	// Each process's metrics port serves Prometheus text with its own metrics.
	wantMetrics := map[string][]string{
		"ingress": {"rex_ingress_refused_total", "rex_ingress_inflight", "rpc_server_call_duration_seconds"},
		"execute": {`rex_deliberations_submitted_total{kind="deliberation",outcome="accepted"`, "rex_submit_duration_seconds", "rex_function_inflight", "rex_ray_request_duration_seconds",
			"rex_executor_deploys_total"},
		"status": {"rex_function_inflight", "http_server_request_duration_seconds", `rex_function_refused_total{reason="unauthenticated"`},
		"list": {"rex_work_queue_waiting", "rex_work_queue_oldest_age_seconds", "rex_executor_replicas", "rex_ray_breaker_state",
			"rex_executor_deploys_total"},
	}
	// Refusals to count: a call without a token at the ingress, a request event without the
	// internal credential at a function.
	_, _ = client.GetActiveJobs(context.Background(), &pb.GetActiveJobsRequest{})
	if resp, err := http.Post(s.status.url, "application/cloudevents+json", strings.NewReader("{}")); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("an event without the internal credential: %v %v, want 401", resp, err)
	} else {
		resp.Body.Close()
	}
	for name, wants := range wantMetrics {
		text := scrape(t, ports[name])
		for _, w := range wants {
			if !strings.Contains(text, w) {
				t.Errorf("%s's /metrics has no %s", name, w)
			}
		}
		if strings.Contains(text, id) || strings.Contains(text, secret) {
			t.Errorf("%s's /metrics names a deliberation or its prompt: ids are never labels", name)
		}
	}
	// This system's NATS is its own, so one of execute and list deployed its executor, once.
	var firstDeploys float64
	for _, name := range []string{"execute", "list"} {
		for _, line := range strings.Split(scrape(t, ports[name]), "\n") {
			if strings.HasPrefix(line, "rex_executor_deploys_total{") && strings.Contains(line, `reason="first"`) {
				v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
				if err != nil {
					t.Fatalf("%s's /metrics: %q: %v", name, line, err)
				}
				firstDeploys += v
			}
		}
	}
	if firstDeploys != 1 {
		t.Errorf("execute and list count %v first deploys of the executor, want 1 (one submission, counted by its deployer)", firstDeploys)
	}
	// The executor's own metrics reach the receiver over OTLP.
	points := sink.WaitMetrics(t, func(all []testenv.MetricPoint) bool {
		seen := 0
		for _, m := range all {
			if m.ServiceName == "ray-executor-executor" && m.Name == "rex.executor.deliberation.duration" {
				seen++
			}
			if m.ServiceName == "ray-executor-executor" && m.Name == "rex.executor.llm.errors" {
				seen++
			}
		}
		return seen >= 2
	}, 60*time.Second)

	// README lists every metric served, and every metric the Grafana dashboard charts
	// exists: served on a metrics port, or (the executor's) received over OTLP, by the name
	// Prometheus gives it.
	served := servedMetrics(t, ports, points)
	checkMetricsDocumented(t, served)
	raw, err := os.ReadFile(filepath.Join("..", "knative", "grafana-dashboard.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		t.Fatal(err)
	}
	dash := []byte(cm.Data["ray-executor.json"])
	var board struct {
		Panels []struct {
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(dash, &board); err != nil {
		t.Fatal(err)
	}
	var charted []string
	for _, p := range board.Panels {
		for _, q := range p.Targets {
			expr := regexp.MustCompile(`by \([^)]*\)`).ReplaceAllString(q.Expr, "") // label names, not metrics
			charted = append(charted, regexp.MustCompile(`\b(?:rex|rpc|http)_[a-z_]+`).FindAllString(expr, -1)...)
		}
	}
	if len(charted) < 15 {
		t.Fatalf("the dashboard charts %d metrics: %v", len(charted), charted)
	}
	for _, name := range charted {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum")
		if _, ok := served[base]; !ok {
			t.Errorf("the dashboard charts %s, which no process serves or exports", name)
		}
	}
}

// servedMetrics are the metrics of ours (rex_, rpc_, http_) that the processes serve on
// their metrics ports, and the executor's received over OTLP, by the name Prometheus gives
// them (a histogram's name, without _bucket, _sum or _count), each with the labels it
// carries (le, service_name and the scope's left out).
func servedMetrics(t *testing.T, ports map[string]int, points []testenv.MetricPoint) map[string]map[string]bool {
	t.Helper()
	ours := regexp.MustCompile(`^((?:rex|rpc|http)_[a-z_]+?)(?:_bucket|_sum|_count)?(?:\{(.*)\})? `)
	label := regexp.MustCompile(`([a-z_]+)="`)
	served := map[string]map[string]bool{}
	note := func(name string, keys ...string) {
		if served[name] == nil {
			served[name] = map[string]bool{}
		}
		for _, k := range keys {
			if k != "le" && k != "service_name" && !strings.HasPrefix(k, "otel_scope_") {
				served[name][k] = true
			}
		}
	}
	for _, name := range []string{"ingress", "execute", "status", "list"} {
		for _, line := range strings.Split(scrape(t, ports[name]), "\n") {
			m := ours.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			var keys []string
			for _, l := range label.FindAllStringSubmatch(m[2], -1) {
				keys = append(keys, l[1])
			}
			note(m[1], keys...)
		}
	}
	for _, p := range points {
		if p.ServiceName != "ray-executor-executor" {
			continue
		}
		var keys []string
		for k := range p.Attributes {
			keys = append(keys, strings.ReplaceAll(k, ".", "_"))
		}
		note(promName(p), keys...)
	}
	return served
}

// checkMetricsDocumented: README's metrics table lists every metric served (servedMetrics),
// with every label it carries, and each metric the table lists is one that is served.
func checkMetricsDocumented(t *testing.T, served map[string]map[string]bool) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	documented := map[string]string{} // metric → its row's labels column
	row := regexp.MustCompile("^\\| `((?:rex|rpc|http)_[a-z_]+)` \\|[^|]*\\|([^|]*)\\|")
	for _, line := range strings.Split(string(raw), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			documented[m[1]] = m[2]
		}
	}
	if len(documented) < 15 {
		t.Fatalf("README's metrics table lists %d metrics: %v", len(documented), documented)
	}
	for name, keys := range served {
		col, ok := documented[name]
		if !ok {
			t.Errorf("%s is served or exported, and README's metrics table does not list it", name)
			continue
		}
		for k := range keys {
			if !strings.Contains(col, "`"+k+"`") {
				t.Errorf("%s carries the label %s, and README's row for it does not name it (%q)", name, k, col)
			}
		}
	}
	for name := range documented {
		if _, ok := served[name]; !ok {
			t.Errorf("README lists %s, which no process served or exported in this test", name)
		}
	}
}

// promName is the name Prometheus gives an OTLP metric (the collector's translation, as
// the Go binaries' own exporter does it): dots to underscores, the unit's suffix, _total
// for a monotonic sum.
func promName(m testenv.MetricPoint) string {
	n := strings.ReplaceAll(m.Name, ".", "_")
	if m.Unit == "s" {
		n += "_seconds"
	}
	if m.Type == "Sum" && m.Monotonic {
		n += "_total"
	}
	return n
}

// chain walks from span id up its parents within trace to the caller's span root, and
// returns the spans on the way (nil when the chain breaks before it gets there).
func chain(spans []testenv.Span, trace, id, root string) []testenv.Span {
	byID := map[string]testenv.Span{}
	for _, sp := range spans {
		if sp.TraceID == trace {
			byID[sp.SpanID] = sp
		}
	}
	var out []testenv.Span
	for range 64 {
		sp, ok := byID[id]
		if !ok {
			return nil
		}
		out = append(out, sp)
		if sp.ParentSpanID == root {
			return out
		}
		id = sp.ParentSpanID
	}
	return nil
}

func scrape(t *testing.T, port int) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatalf("scraping :%d: %v", port, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping :%d: %d %s", port, resp.StatusCode, b)
	}
	return string(b)
}
