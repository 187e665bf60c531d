// Command otlp-sink is the tests' OTLP receiver: the OpenTelemetry Collector's own OTLP
// receiver (go.opentelemetry.io/collector/receiver/otlpreceiver) listening for OTLP over
// gRPC and HTTP, writing every span and every metric data point it receives as one JSON
// line to a file. `make test` builds it into bin/otlp-sink; shared/testenv/otlpsink.go starts
// it for a test and reads the files back.
//
// This is a module of its own so the main module never takes the collector's dependencies.
//
//	otlp-sink -grpc 127.0.0.1:0 -http 127.0.0.1:0 -traces spans.jsonl -metrics metrics.jsonl
//
// Port 0 picks a free port. The first line on stdout names the addresses the receiver
// listens on, "grpc=HOST:PORT http=HOST:PORT", once both accept connections. SIGTERM or
// SIGINT shuts the receiver down (what it accepted is written before it answered).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func main() {
	grpcAddr := flag.String("grpc", "127.0.0.1:4317", "OTLP/gRPC listen address (port 0: a free port)")
	httpAddr := flag.String("http", "127.0.0.1:4318", "OTLP/HTTP listen address (port 0: a free port)")
	tracesPath := flag.String("traces", "", "file to append one JSON line per received span to (required)")
	metricsPath := flag.String("metrics", "", "file to append one JSON line per received metric data point to (required)")
	flag.Parse()
	if *tracesPath == "" || *metricsPath == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: otlp-sink -grpc ADDR -http ADDR -traces FILE -metrics FILE")
		os.Exit(2)
	}
	if err := run(*grpcAddr, *httpAddr, *tracesPath, *metricsPath); err != nil {
		fmt.Fprintln(os.Stderr, "otlp-sink:", err)
		os.Exit(1)
	}
}

func run(grpcAddr, httpAddr, tracesPath, metricsPath string) error {
	traces, err := newSink(tracesPath)
	if err != nil {
		return err
	}
	defer traces.Close()
	metrics, err := newSink(metricsPath)
	if err != nil {
		return err
	}
	defer metrics.Close()

	// The receiver logs the address each server listens on when it starts; that is how a
	// port 0 is learned without a race. Warnings and errors go to stderr.
	started, startLogs := observer.New(zapcore.InfoLevel)
	stderr := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.Lock(os.Stderr), zapcore.WarnLevel)
	logger := zap.New(zapcore.NewTee(started, stderr))

	factory := otlpreceiver.NewFactory()
	cfg := factory.CreateDefaultConfig().(*otlpreceiver.Config)
	cfg.Protocols.GRPC.GetOrInsertDefault().NetAddr.Endpoint = grpcAddr
	cfg.Protocols.HTTP.GetOrInsertDefault().ServerConfig.NetAddr.Endpoint = httpAddr
	set := receiver.Settings{
		ID: component.NewID(factory.Type()),
		TelemetrySettings: component.TelemetrySettings{
			Logger:         logger,
			TracerProvider: tracenoop.NewTracerProvider(),
			MeterProvider:  metricnoop.NewMeterProvider(),
			Resource:       pcommon.NewResource(),
		},
		BuildInfo: component.NewDefaultBuildInfo(),
	}
	ctx := context.Background()
	tracesConsumer, err := consumer.NewTraces(func(_ context.Context, td ptrace.Traces) error {
		return traces.write(spanLines(td))
	})
	if err != nil {
		return err
	}
	metricsConsumer, err := consumer.NewMetrics(func(_ context.Context, md pmetric.Metrics) error {
		return metrics.write(pointLines(md))
	})
	if err != nil {
		return err
	}
	// The two signals share one receiver (the factory keys it by its config).
	tr, err := factory.CreateTraces(ctx, set, cfg, tracesConsumer)
	if err != nil {
		return err
	}
	mr, err := factory.CreateMetrics(ctx, set, cfg, metricsConsumer)
	if err != nil {
		return err
	}
	host := nopHost{}
	if err := tr.Start(ctx, host); err != nil {
		return fmt.Errorf("starting the OTLP receiver: %w", err)
	}
	if err := mr.Start(ctx, host); err != nil {
		return fmt.Errorf("starting the OTLP receiver: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tr.Shutdown(sctx)
		_ = mr.Shutdown(sctx)
	}()

	grpcBound, httpBound := endpointLogged(startLogs, "Starting GRPC server"), endpointLogged(startLogs, "Starting HTTP server")
	if grpcBound == "" || httpBound == "" {
		return errors.New("the OTLP receiver did not log the addresses it listens on (otlpreceiver changed?)")
	}
	fmt.Printf("grpc=%s http=%s\n", grpcBound, httpBound)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

func endpointLogged(logs *observer.ObservedLogs, message string) string {
	for _, e := range logs.FilterMessage(message).All() {
		if v, ok := e.ContextMap()["endpoint"].(string); ok {
			return v
		}
	}
	return ""
}

type nopHost struct{}

func (nopHost) GetExtensions() map[component.ID]component.Component { return nil }

// sink appends JSON lines to one file; each batch is written by one write call, so a
// reader sees whole lines only, once it ignores an unterminated last one.
type sink struct {
	mu sync.Mutex
	f  *os.File
}

func newSink(path string) (*sink, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &sink{f: f}, nil
}

func (s *sink) write(lines []any) error {
	var b strings.Builder
	for _, l := range lines {
		j, err := json.Marshal(l)
		if err != nil {
			return err
		}
		b.Write(j)
		b.WriteByte('\n')
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.f.WriteString(b.String())
	return err
}

func (s *sink) Close() error { return s.f.Close() }

// Span is one received span as written to the traces file.
type Span struct {
	TraceID       string            `json:"trace_id"`
	SpanID        string            `json:"span_id"`
	ParentSpanID  string            `json:"parent_span_id"`
	Name          string            `json:"name"`
	Kind          string            `json:"kind"`
	ServiceName   string            `json:"service.name"`
	Scope         string            `json:"scope"`
	StartUnixNano uint64            `json:"start_unix_nano"`
	EndUnixNano   uint64            `json:"end_unix_nano"`
	StatusCode    string            `json:"status_code"`
	StatusMessage string            `json:"status_message,omitempty"`
	Attributes    map[string]string `json:"attributes"`
	Resource      map[string]string `json:"resource"`
	Events        []string          `json:"events,omitempty"`
}

func spanLines(td ptrace.Traces) []any {
	var out []any
	for _, rs := range td.ResourceSpans().All() {
		res := flatten(rs.Resource().Attributes())
		for _, ss := range rs.ScopeSpans().All() {
			for _, sp := range ss.Spans().All() {
				s := Span{
					TraceID:       hexID(sp.TraceID()),
					SpanID:        hexID(sp.SpanID()),
					ParentSpanID:  hexID(sp.ParentSpanID()),
					Name:          sp.Name(),
					Kind:          sp.Kind().String(),
					ServiceName:   res["service.name"],
					Scope:         ss.Scope().Name(),
					StartUnixNano: uint64(sp.StartTimestamp()),
					EndUnixNano:   uint64(sp.EndTimestamp()),
					StatusCode:    sp.Status().Code().String(),
					StatusMessage: sp.Status().Message(),
					Attributes:    flatten(sp.Attributes()),
					Resource:      res,
				}
				for _, ev := range sp.Events().All() {
					s.Events = append(s.Events, ev.Name())
				}
				out = append(out, s)
			}
		}
	}
	return out
}

// MetricPoint is one received metric data point as written to the metrics file: Value for
// a sum or a gauge, Count and Sum (and the buckets) for a histogram.
type MetricPoint struct {
	Name           string            `json:"name"`
	ServiceName    string            `json:"service.name"`
	Scope          string            `json:"scope"`
	Type           string            `json:"type"`
	Unit           string            `json:"unit,omitempty"`
	Monotonic      bool              `json:"monotonic,omitempty"`
	Temporality    string            `json:"temporality,omitempty"`
	TimeUnixNano   uint64            `json:"time_unix_nano"`
	Attributes     map[string]string `json:"attributes"`
	Value          *float64          `json:"value,omitempty"`
	Count          *uint64           `json:"count,omitempty"`
	Sum            *float64          `json:"sum,omitempty"`
	BucketCounts   []uint64          `json:"bucket_counts,omitempty"`
	ExplicitBounds []float64         `json:"explicit_bounds,omitempty"`
}

func pointLines(md pmetric.Metrics) []any {
	var out []any
	for _, rm := range md.ResourceMetrics().All() {
		service := flatten(rm.Resource().Attributes())["service.name"]
		for _, sm := range rm.ScopeMetrics().All() {
			for _, m := range sm.Metrics().All() {
				base := MetricPoint{Name: m.Name(), ServiceName: service, Scope: sm.Scope().Name(), Type: m.Type().String(), Unit: m.Unit()}
				// point is base for one data point; counted adds a count and a sum to it.
				point := func(ts pcommon.Timestamp, attrs pcommon.Map) MetricPoint {
					p := base
					p.TimeUnixNano, p.Attributes = uint64(ts), flatten(attrs)
					return p
				}
				counted := func(p MetricPoint, count uint64, sum float64) MetricPoint {
					p.Count, p.Sum = &count, &sum
					return p
				}
				number := func(dps pmetric.NumberDataPointSlice) {
					for _, dp := range dps.All() {
						p := point(dp.Timestamp(), dp.Attributes())
						v := dp.DoubleValue()
						if dp.ValueType() == pmetric.NumberDataPointValueTypeInt {
							v = float64(dp.IntValue())
						}
						p.Value = &v
						out = append(out, p)
					}
				}
				switch m.Type() {
				case pmetric.MetricTypeGauge:
					number(m.Gauge().DataPoints())
				case pmetric.MetricTypeSum:
					base.Monotonic = m.Sum().IsMonotonic()
					base.Temporality = m.Sum().AggregationTemporality().String()
					number(m.Sum().DataPoints())
				case pmetric.MetricTypeHistogram:
					base.Temporality = m.Histogram().AggregationTemporality().String()
					for _, dp := range m.Histogram().DataPoints().All() {
						p := counted(point(dp.Timestamp(), dp.Attributes()), dp.Count(), dp.Sum())
						p.BucketCounts, p.ExplicitBounds = dp.BucketCounts().AsRaw(), dp.ExplicitBounds().AsRaw()
						out = append(out, p)
					}
				case pmetric.MetricTypeExponentialHistogram:
					base.Temporality = m.ExponentialHistogram().AggregationTemporality().String()
					for _, dp := range m.ExponentialHistogram().DataPoints().All() {
						out = append(out, counted(point(dp.Timestamp(), dp.Attributes()), dp.Count(), dp.Sum()))
					}
				case pmetric.MetricTypeSummary:
					for _, dp := range m.Summary().DataPoints().All() {
						out = append(out, counted(point(dp.Timestamp(), dp.Attributes()), dp.Count(), dp.Sum()))
					}
				}
			}
		}
	}
	return out
}

// flatten turns attributes into strings: a string as it is, anything else as
// pcommon.Value.AsString renders it (numbers and booleans as text, maps and slices as JSON).
func flatten(attrs pcommon.Map) map[string]string {
	out := make(map[string]string, attrs.Len())
	for k, v := range attrs.All() {
		out[k] = v.AsString()
	}
	return out
}

// hexID is an ID in lower-case hex, "" when it is empty (a root span's parent).
func hexID[T interface {
	IsEmpty() bool
	String() string
}](id T) string {
	if id.IsEmpty() {
		return ""
	}
	return id.String()
}
