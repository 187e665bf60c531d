package validate

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
)

// alertCase is a situation an alert is written for, or one it must stay quiet in: series in
// promqltest's load notation, one sample a minute for an hour.
type alertCase struct {
	series string
	labels map[string]string // the firing alert's labels (beside alertname and severity)
}

// alertCases says, for every alert in knative/monitoring/alerts.yaml, when it must fire and
// the nearby situations in which it must not.
var alertCases = map[string]struct {
	fires alertCase
	quiet []alertCase
}{
	"RayExecutorWorkWaitingWithoutExecutor": {
		fires: alertCase{series: `rex_work_queue_waiting{service_name="ray-executor-list"} 3x60
			rex_executor_replicas{service_name="ray-executor-list"} 0x60`},
		quiet: []alertCase{
			{series: `rex_work_queue_waiting{service_name="ray-executor-list"} 3x60
				rex_executor_replicas{service_name="ray-executor-list"} 1x60`},
			{series: `rex_work_queue_waiting{service_name="ray-executor-list"} 0x60
				rex_executor_replicas{service_name="ray-executor-list"} 0x60`},
		},
	},
	"RayExecutorWorkWaitingTooLong": {
		fires: alertCase{series: `rex_work_queue_oldest_age_seconds{service_name="ray-executor-list"} 420x60`},
		quiet: []alertCase{{series: `rex_work_queue_oldest_age_seconds{service_name="ray-executor-list"} 240x60`}},
	},
	"RayExecutorRayBreakerOpen": {
		fires: alertCase{series: `rex_ray_breaker_state{service_name="ray-executor-list"} 1x60
			rex_ray_breaker_state{service_name="ray-executor-execute"} 0x60`,
			labels: map[string]string{"service_name": "ray-executor-list"}},
		quiet: []alertCase{{series: `rex_ray_breaker_state{service_name="ray-executor-list"} 2x60
			rex_ray_breaker_state{service_name="ray-executor-execute"} 0x60`}},
	},
	"RayExecutorSubmissionsFailing": {
		fires: alertCase{series: `rex_deliberations_submitted_total{kind="deliberation",outcome="accepted"} 0+600x60
			rex_deliberations_submitted_total{kind="deliberation",outcome="unavailable"} 0+30x60`},
		quiet: []alertCase{{series: `rex_deliberations_submitted_total{kind="deliberation",outcome="accepted"} 0+600x60
			rex_deliberations_submitted_total{kind="deliberation",outcome="duplicate"} 0+60x60
			rex_deliberations_submitted_total{kind="deliberation",outcome="invalid"} 0+60x60
			rex_deliberations_submitted_total{kind="backlog_review",outcome="conflict"} 0+6x60`}},
	},
	"RayExecutorIngressErrors": {
		fires: alertCase{series: `rpc_server_call_duration_seconds_count{rpc_method="m",rpc_response_status_code="OK"} 0+600x60
			rpc_server_call_duration_seconds_count{rpc_method="m",rpc_response_status_code="UNAVAILABLE"} 0+60x60`},
		quiet: []alertCase{{series: `rpc_server_call_duration_seconds_count{rpc_method="m",rpc_response_status_code="OK"} 0+600x60
			rpc_server_call_duration_seconds_count{rpc_method="m",rpc_response_status_code="NOT_FOUND"} 0+300x60
			rpc_server_call_duration_seconds_count{rpc_method="m",rpc_response_status_code="INVALID_ARGUMENT"} 0+120x60
			rpc_server_call_duration_seconds_count{rpc_method="m",rpc_response_status_code="INTERNAL"} 0+6x60`}},
	},
	"RayExecutorFunctionsSaturated": {
		fires: alertCase{series: `rex_function_refused_total{service_name="ray-executor-status",reason="resource_exhausted"} 0+300x60`,
			labels: map[string]string{"service_name": "ray-executor-status"}},
		quiet: []alertCase{{series: `rex_function_refused_total{service_name="ray-executor-status",reason="resource_exhausted"} 0+30x60
			rex_function_refused_total{service_name="ray-executor-status",reason="not_found"} 0+600x60`}},
	},
	"RayExecutorDeliberationsFailing": {
		fires: alertCase{series: `rex_executor_deliberation_duration_seconds_count{outcome="completed"} 0+60x60
			rex_executor_deliberation_duration_seconds_count{outcome="failed"} 0+30x60`},
		quiet: []alertCase{{series: `rex_executor_deliberation_duration_seconds_count{outcome="completed"} 0+60x60
			rex_executor_deliberation_duration_seconds_count{outcome="cancelled"} 0+30x60
			rex_executor_deliberation_duration_seconds_count{outcome="failed"} 0+5x60`}},
	},
	"RayExecutorLLMErrors": {
		fires: alertCase{series: `rex_executor_llm_duration_seconds_count{model="m1",outcome="ok"} 0+70x60
			rex_executor_llm_duration_seconds_count{model="m1",outcome="timeout"} 0+30x60
			rex_executor_llm_errors_total{model="m1",error_type="timeout"} 0+30x60
			rex_executor_llm_duration_seconds_count{model="m2",outcome="ok"} 0+100x60`,
			labels: map[string]string{"model": "m1"}},
		quiet: []alertCase{{series: `rex_executor_llm_duration_seconds_count{model="m1",outcome="ok"} 0+95x60
			rex_executor_llm_duration_seconds_count{model="m1",outcome="timeout"} 0+5x60
			rex_executor_llm_errors_total{model="m1",error_type="timeout"} 0+5x60`}},
	},
	"RayExecutorCrashLooping": {
		fires: alertCase{series: `rex_executor_deploys_total{service_name="ray-executor-list",reason="crashed"} 0+0.1x60
			rex_executor_deploys_total{service_name="ray-executor-execute",reason="stuck"} 0+0.05x60`},
		quiet: []alertCase{{series: `rex_executor_deploys_total{service_name="ray-executor-list",reason="crashed"} 0+0.05x60
			rex_executor_deploys_total{service_name="ray-executor-execute",reason="roll"} 0+1x60
			rex_executor_deploys_total{service_name="ray-executor-execute",reason="lost"} 0+1x60
			rex_executor_deploys_total{service_name="ray-executor-list",reason="ended"} 0+0.2x60`}},
	},
}

// TestAlertRules checks knative/monitoring/alerts.yaml: each rule is complete, its
// expression parses and names only metrics and labels README's metrics table documents (the
// e2e tests check that table against what the processes serve), and, evaluated as
// Prometheus evaluates alerting rules, it fires in the situation it is written for, with its
// annotations filled in, and stays quiet in the nearby ones.
func TestAlertRules(t *testing.T) {
	m := load(t)
	pr, ok := m.rules["ray-executor"]
	if !ok || len(m.rules) != 1 {
		t.Fatalf("want one PrometheusRule, ray-executor, got %v", sortedKeys(m.rules))
	}
	documented := readmeMetrics(t)
	runbook, base := runbookSections(t), runbookBase(t)
	seen := map[string]bool{}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Record != "" || r.Alert == "" {
				t.Errorf("rule %q / %q: want alerting rules only", r.Record, r.Alert)
				continue
			}
			if seen[r.Alert] {
				t.Errorf("%s: a second alert of that name", r.Alert)
			}
			seen[r.Alert] = true
			t.Run(r.Alert, func(t *testing.T) { checkAlert(t, r, documented) })
			if want := base + strings.ToLower(r.Alert); r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			if !runbook[r.Alert] {
				t.Errorf("%s: RUNBOOK.md has no section \"## %s\"", r.Alert, r.Alert)
			}
		}
	}
	for name := range alertCases {
		if !seen[name] {
			t.Errorf("alertCases has %s, which alerts.yaml does not define", name)
		}
	}
	for name := range runbook {
		if !seen[name] {
			t.Errorf("RUNBOOK.md has a section for %s, which alerts.yaml does not define", name)
		}
	}
}

// alertName is the shape of an alert's name, and so of a RUNBOOK.md section's heading.
var alertName = regexp.MustCompile(`^RayExecutor[A-Za-z]+$`)

// runbookSections are the alerts knative/monitoring/RUNBOOK.md has a section ("## <alert>")
// for. GitHub's anchor of such a heading is the alert's name in lower case.
func runbookSections(t *testing.T) map[string]bool {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "knative", "monitoring", "RUNBOOK.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(raw), "\n") {
		if name, ok := strings.CutPrefix(line, "## "); ok {
			if !alertName.MatchString(name) {
				t.Errorf("RUNBOOK.md: section %q: want one section per alert, named as the alert", name)
				continue
			}
			out[name] = true
		}
	}
	return out
}

// runbookBase is where RUNBOOK.md is published: the main module's home on GitHub (its path
// in go.mod), on the main branch.
func runbookBase(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(raw), "\n")
	module, ok := strings.CutPrefix(first, "module github.com/")
	if !ok {
		t.Fatalf("go.mod: %q is not a github.com module", first)
	}
	return "https://github.com/" + strings.TrimSpace(module) + "/blob/main/knative/monitoring/RUNBOOK.md#"
}

func checkAlert(t *testing.T, r monitoringv1.Rule, documented map[string]string) {
	if !strings.HasPrefix(r.Alert, "RayExecutor") {
		t.Errorf("alert name %q: want the prefix RayExecutor, so a shared Alertmanager tells whose it is", r.Alert)
	}
	hold := time.Duration(0)
	if r.For != nil {
		d, err := model.ParseDuration(string(*r.For))
		if err != nil {
			t.Fatalf("for %q: %v", *r.For, err)
		}
		hold = time.Duration(d)
	}
	if hold < time.Minute {
		t.Errorf("for %v: want at least 1m, so one scrape's blip does not page anyone", hold)
	}
	if s := r.Labels["severity"]; s != "critical" && s != "warning" {
		t.Errorf("labels.severity %q: want critical or warning", s)
	}
	for _, k := range []string{"summary", "description"} {
		if strings.TrimSpace(r.Annotations[k]) == "" {
			t.Errorf("annotations.%s is empty", k)
		}
	}
	expr, err := parser.NewParser(parser.Options{}).ParseExpr(r.Expr.String())
	if err != nil {
		t.Fatalf("expr %q: %v", r.Expr.String(), err)
	}
	checkNames(t, expr, documented)

	c, ok := alertCases[r.Alert]
	if !ok {
		t.Fatalf("no case in alertCases says when %s fires and when it does not", r.Alert)
	}
	firing := evalAlert(t, r, expr, hold, c.fires.series)
	if len(firing) == 0 {
		t.Fatalf("did not fire in the situation it is written for:\n%s", c.fires.series)
	}
	for _, a := range firing {
		for k, want := range c.fires.labels {
			if got := a.Labels.Get(k); got != want {
				t.Errorf("firing alert's label %s = %q, want %q (%v)", k, got, want, a.Labels)
			}
		}
		a.Annotations.Range(func(l labels.Label) {
			if strings.Contains(l.Value, "<error") || strings.Contains(l.Value, "<no value>") {
				t.Errorf("annotation %s does not expand: %q", l.Name, l.Value)
			}
		})
		// An annotation naming a label the alert does not carry expands to nothing.
		for _, k := range labelRef.FindAllStringSubmatch(fmt.Sprint(r.Annotations), -1) {
			if a.Labels.Get(k[1]) == "" {
				t.Errorf("an annotation names $labels.%s, which the alert does not carry (%v)", k[1], a.Labels)
			}
		}
	}
	for i, q := range c.quiet {
		if got := evalAlert(t, r, expr, hold, q.series); len(got) != 0 {
			t.Errorf("fired in quiet case %d:\n%s\nalerts: %v", i, q.series, got[0].Labels)
		}
	}
}

// labelRef is an annotation's reference to one of the alert's labels.
var labelRef = regexp.MustCompile(`\$labels\.([a-z_]+)`)

// evalAlert loads series and evaluates r (its expression parsed as expr, its for as hold)
// once a minute for the hour they cover, as Prometheus's rule manager does, and returns the
// alerts firing at the end.
func evalAlert(t *testing.T, r monitoringv1.Rule, expr parser.Expr, hold time.Duration, series string) []*rules.Alert {
	t.Helper()
	rule := rules.NewAlertingRule(r.Alert, expr, hold, 0, labels.FromMap(r.Labels), labels.FromMap(r.Annotations),
		labels.EmptyLabels(), "", false, slog.New(slog.DiscardHandler))
	storage := promqltest.LoadedStorage(t, "load 1m\n"+indent(series))
	engine := promqltest.NewTestEngine(t, false, 0, promqltest.DefaultMaxSamplesPerQuery)
	query := rules.EngineQueryFunc(engine, storage)
	for ts := time.Unix(0, 0).UTC(); ts.Before(time.Unix(3601, 0)); ts = ts.Add(time.Minute) {
		if _, err := rule.Eval(context.Background(), 0, ts, query, nil, 0); err != nil {
			t.Fatalf("eval at %v: %v", ts, err)
		}
	}
	var firing []*rules.Alert
	for _, a := range rule.ActiveAlerts() {
		if a.State == rules.StateFiring {
			firing = append(firing, a)
		}
	}
	return firing
}

func indent(series string) string {
	var b strings.Builder
	for _, l := range strings.Split(series, "\n") {
		b.WriteString("  " + strings.TrimSpace(l) + "\n")
	}
	return b.String()
}

// checkNames: every metric the expression selects is in README's table (a histogram by its
// name, without _bucket, _sum or _count), every label it matches or groups by is named in
// that metric's row (service_name, which every series carries, aside).
func checkNames(t *testing.T, expr parser.Expr, documented map[string]string) {
	t.Helper()
	var cols []string
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		base := vs.Name
		for _, s := range []string{"_bucket", "_sum", "_count"} {
			base = strings.TrimSuffix(base, s)
		}
		col, ok := documented[base]
		if !ok {
			t.Errorf("selects %s, which README's metrics table does not list", vs.Name)
			return nil
		}
		cols = append(cols, col)
		for _, mt := range vs.LabelMatchers {
			if mt.Name != model.MetricNameLabel && !labelDocumented(mt.Name, col) {
				t.Errorf("matches the label %s of %s, which README's row for it does not name", mt.Name, vs.Name)
			}
		}
		return nil
	})
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		if ag, ok := n.(*parser.AggregateExpr); ok {
			for _, l := range ag.Grouping {
				if !slices.ContainsFunc(cols, func(col string) bool { return labelDocumented(l, col) }) {
					t.Errorf("groups by %s, which README names for none of the metrics it selects", l)
				}
			}
		}
		return nil
	})
}

func labelDocumented(label, col string) bool {
	return label == "service_name" || strings.Contains(col, "`"+label+"`")
}

// readmeMetrics reads README's metrics table: each metric's Prometheus name and its labels
// column.
func readmeMetrics(t *testing.T) map[string]string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	row := regexp.MustCompile("^\\| `((?:rex|rpc|http)_[a-z_]+)` \\|[^|]*\\|([^|]*)\\|")
	for _, line := range strings.Split(string(raw), "\n") {
		if m := row.FindStringSubmatch(line); m != nil {
			out[m[1]] = m[2]
		}
	}
	if len(out) < 15 {
		t.Fatalf("README's metrics table lists %d metrics: %v", len(out), out)
	}
	return out
}
