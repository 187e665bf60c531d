package testenv

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A real OTLP receiver for the tests (issue 14): bin/otlp-sink, the OpenTelemetry
// Collector's own OTLP receiver built from shared/testenv/otlpsink (a module of its own, so
// this module never takes the collector's dependencies; `make otlp-sink`, which `make test`
// runs). It writes every span and metric data point it receives as a JSON line; the types
// below read them back.

// Span is one span the sink received. IDs are lower-case hex; ParentSpanID is "" for a root
// span. Attributes and Resource hold every value as text (numbers and booleans as their
// text, arrays and maps as JSON).
type Span struct {
	TraceID       string            `json:"trace_id"`
	SpanID        string            `json:"span_id"`
	ParentSpanID  string            `json:"parent_span_id"`
	Name          string            `json:"name"`
	Kind          string            `json:"kind"` // Internal, Server, Client, Producer, Consumer, Unspecified
	ServiceName   string            `json:"service.name"`
	Scope         string            `json:"scope"` // the instrumentation scope's name
	StartUnixNano uint64            `json:"start_unix_nano"`
	EndUnixNano   uint64            `json:"end_unix_nano"`
	StatusCode    string            `json:"status_code"` // Unset, Ok, Error
	StatusMessage string            `json:"status_message"`
	Attributes    map[string]string `json:"attributes"`
	Resource      map[string]string `json:"resource"`
	Events        []string          `json:"events"` // the events' names
}

// MetricPoint is one metric data point the sink received: Value for a sum or a gauge (an
// integer one as a float), Count and Sum (and the buckets of an explicit histogram) for a
// histogram or a summary.
type MetricPoint struct {
	Name           string            `json:"name"`
	ServiceName    string            `json:"service.name"`
	Scope          string            `json:"scope"`
	Type           string            `json:"type"` // Gauge, Sum, Histogram, ExponentialHistogram, Summary
	Unit           string            `json:"unit"`
	Monotonic      bool              `json:"monotonic"`
	Temporality    string            `json:"temporality"` // Cumulative, Delta ("" for a gauge)
	TimeUnixNano   uint64            `json:"time_unix_nano"`
	Attributes     map[string]string `json:"attributes"`
	Value          *float64          `json:"value"`
	Count          *uint64           `json:"count"`
	Sum            *float64          `json:"sum"`
	BucketCounts   []uint64          `json:"bucket_counts"`
	ExplicitBounds []float64         `json:"explicit_bounds"`
}

// OTLPSink is a running bin/otlp-sink listening on free ports of 127.0.0.1.
type OTLPSink struct {
	cmd         *exec.Cmd
	grpc, http  string // host:port
	tracesPath  string
	metricsPath string
	stderrPath  string
}

// OTLPSinkBin is bin/otlp-sink (OTLP_SINK_BIN overrides it); the test fails without it.
func OTLPSinkBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("OTLP_SINK_BIN")
	if bin == "" {
		bin = filepath.Join(RepoRoot(t), "bin", "otlp-sink")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("testenv: the OTLP receiver is not built (%v): run `make otlp-sink` (make test does)", err)
	}
	return bin
}

// StartOTLPSink starts an OTLP receiver (gRPC and HTTP) for one test; it is stopped when the
// test ends, and its error output logged if the test failed.
func StartOTLPSink(t testing.TB) *OTLPSink {
	t.Helper()
	bin := OTLPSinkBin(t)
	dir := t.TempDir()
	s := &OTLPSink{tracesPath: filepath.Join(dir, "spans.jsonl"), metricsPath: filepath.Join(dir, "metrics.jsonl"), stderrPath: filepath.Join(dir, "stderr.log")}
	s.cmd = exec.Command(bin, "-grpc", "127.0.0.1:0", "-http", "127.0.0.1:0", "-traces", s.tracesPath, "-metrics", s.metricsPath)
	stderr, err := os.Create(s.stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	s.cmd.Stderr = stderr
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("testenv: starting %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = s.cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			if b, _ := os.ReadFile(s.stderrPath); len(b) > 0 {
				t.Logf("otlp-sink stderr:\n%s", b)
			}
		}
	})
	first := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		first <- line
	}()
	var line string
	select {
	case line = <-first:
	case <-time.After(30 * time.Second):
		t.Fatalf("testenv: otlp-sink did not report its addresses within 30 s: %s", s.errOutput())
	}
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "grpc="); ok {
			s.grpc = v
		} else if v, ok := strings.CutPrefix(f, "http="); ok {
			s.http = v
		}
	}
	if s.grpc == "" || s.http == "" {
		t.Fatalf("testenv: otlp-sink did not start (first line %q): %s", line, s.errOutput())
	}
	return s
}

func (s *OTLPSink) errOutput() string {
	b, _ := os.ReadFile(s.stderrPath)
	return string(b)
}

// GRPCAddr is host:port of the OTLP/gRPC receiver (otlptracegrpc.WithEndpoint).
func (s *OTLPSink) GRPCAddr() string { return s.grpc }

// GRPCEndpoint is the OTLP/gRPC receiver's URL, "http://127.0.0.1:NNNN" (plain text): an
// OTEL_EXPORTER_OTLP_ENDPOINT with OTEL_EXPORTER_OTLP_PROTOCOL=grpc, or WithEndpointURL.
func (s *OTLPSink) GRPCEndpoint() string { return "http://" + s.grpc }

// HTTPEndpoint is the OTLP/HTTP receiver's base URL, "http://127.0.0.1:NNNN" (the signals'
// paths /v1/traces and /v1/metrics are under it): an OTEL_EXPORTER_OTLP_ENDPOINT with
// OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf (or http/json).
func (s *OTLPSink) HTTPEndpoint() string { return "http://" + s.http }

// PID is the receiver's process id (to account the CPU it uses).
func (s *OTLPSink) PID() int { return s.cmd.Process.Pid }

// Env is the standard environment that points a process's OTLP exporters at the sink over
// HTTP (protobuf), with a short batch delay so that a short test sees its spans.
func (s *OTLPSink) Env() []string {
	return []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + s.HTTPEndpoint(),
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_BSP_SCHEDULE_DELAY=100",
		"OTEL_METRIC_EXPORT_INTERVAL=500",
	}
}

// Spans is every span received so far, in the order received.
func (s *OTLPSink) Spans() []Span { return readJSONLines[Span](s.tracesPath) }

// Metrics is every metric data point received so far, in the order received.
func (s *OTLPSink) Metrics() []MetricPoint { return readJSONLines[MetricPoint](s.metricsPath) }

// SpansOfTrace is the spans received so far whose trace id is traceID (hex).
func (s *OTLPSink) SpansOfTrace(traceID string) []Span {
	var out []Span
	for _, sp := range s.Spans() {
		if sp.TraceID == traceID {
			out = append(out, sp)
		}
	}
	return out
}

// WaitSpans polls the received spans until pred holds for them and returns them; it fails
// the test, listing what was received, when pred does not hold within timeout.
func (s *OTLPSink) WaitSpans(t testing.TB, pred func([]Span) bool, timeout time.Duration) []Span {
	t.Helper()
	return waitFor(t, s.Spans, pred, timeout, "spans", func(sp Span) string {
		return fmt.Sprintf("%s %s/%s parent %q service %q kind %s %v", sp.Name, sp.TraceID, sp.SpanID, sp.ParentSpanID, sp.ServiceName, sp.Kind, sp.Attributes)
	})
}

// WaitMetrics polls the received metric points until pred holds for them and returns them;
// it fails the test, listing what was received, when pred does not hold within timeout.
func (s *OTLPSink) WaitMetrics(t testing.TB, pred func([]MetricPoint) bool, timeout time.Duration) []MetricPoint {
	t.Helper()
	return waitFor(t, s.Metrics, pred, timeout, "metric points", func(p MetricPoint) string {
		return fmt.Sprintf("%s %s service %q %v", p.Name, p.Type, p.ServiceName, p.Attributes)
	})
}

func waitFor[T any](t testing.TB, read func() []T, pred func([]T) bool, timeout time.Duration, what string, show func(T) string) []T {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := read()
		if pred(got) {
			return got
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, v := range got {
				b.WriteString("\n  " + show(v))
			}
			t.Fatalf("testenv: the OTLP sink did not receive the expected %s within %s; it has %d:%s", what, timeout, len(got), b.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readJSONLines decodes every complete line of path (a line still being written, without
// its newline, is left for the next read); a missing file is no lines.
func readJSONLines[T any](path string) []T {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		return nil
	}
	var out []T
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var v T
		if err := json.Unmarshal(line, &v); err != nil {
			panic(fmt.Sprintf("testenv: otlp-sink wrote a line that is not JSON (%v): %s", err, line))
		}
		out = append(out, v)
	}
	return out
}
