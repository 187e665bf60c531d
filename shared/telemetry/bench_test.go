package telemetry

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkHTTPHandler is what HTTPHandler costs a request in process: off (no exporter:
// the duration metric only) against traced (a span per request, exported over OTLP/HTTP to
// a server that discards it). go test -run '^$' -bench HTTPHandler ./shared/telemetry/
func BenchmarkHTTPHandler(b *testing.B) {
	discard := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }))
	defer discard.Close()
	for _, bc := range []struct {
		name string
		cfg  Config
	}{
		{"off", Config{ServiceName: "b", Disabled: false}},
		{"traced", Config{ServiceName: "b", TracesEndpoint: discard.URL + "/v1/traces", Protocol: "http/protobuf"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tel, err := Setup(context.Background(), bc.cfg, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			defer tel.Shutdown(context.Background())
			h := HTTPHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"ok":true}`))
			}), "status")
			b.ReportAllocs()
			b.SetParallelism(16) // as the chain benchmark's 32 concurrent requests on 2 cores
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := httptest.NewRequest("POST", "/", nil)
					r.Header.Set("ce-traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
					h.ServeHTTP(httptest.NewRecorder(), r)
				}
			})
		})
	}
}
