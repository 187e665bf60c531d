// Package serving runs a function's HTTP server the way Knative expects: on $PORT, with
// HTTP/1.1 and h2c, liveness and readiness endpoints, and a drain of in-flight requests on
// shutdown. Where Knative has a convention it uses Knative's own code (knative.dev/pkg):
// signals for the shutdown context, network's probe headers to recognise probes, changeset
// for the commit every log line and GetStatus carry.
package serving

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"knative.dev/pkg/changeset"
	"knative.dev/pkg/network"
	"knative.dev/pkg/signals"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

// Paths of the probe endpoints. The function itself answers on every other path.
const (
	LivenessPath  = "/healthz"
	ReadinessPath = "/readyz"
)

// Options tune Run.
type Options struct {
	// Ready reports whether the process can do useful work (its dependencies answer).
	Ready func(ctx context.Context) error
	// OnListen, when set, is told the bound address (tests use port 0).
	OnListen func(addr string)
}

// Function is one composed function (execute, status or list): its handler and what serving
// it needs. The Knative binary serves it with Run; the Functions Framework registration
// (the module root) serves Probes of the same handler.
type Function struct {
	Serving config.Serving
	Logger  *slog.Logger
	// Handler answers the function's request events.
	Handler http.Handler
	// Ready reports whether it can do useful work (its Ray dashboard answers).
	Ready   func(ctx context.Context) error
	closers []func()
}

// Instrument sets up the function's telemetry (shared/telemetry: OTLP export when
// configured, the metrics port) and wraps its Handler so that every request event is a
// server span joined to the caller's trace (the W3C traceparent header); Close flushes and
// stops it. Call it once the Handler is set.
func (f *Function) Instrument(ctx context.Context, cfg telemetry.Config, name string) error {
	t, err := telemetry.Setup(ctx, cfg, f.Logger)
	if err != nil {
		return err
	}
	f.OnClose(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		t.Shutdown(ctx)
	})
	f.Handler = telemetry.HTTPHandler(f.Handler, name)
	return nil
}

// OnClose adds fn to what Close runs (last added, first run).
func (f *Function) OnClose(fn func()) { f.closers = append(f.closers, fn) }

// Close releases what the function holds, such as its NATS connection.
func (f *Function) Close() {
	for i := len(f.closers) - 1; i >= 0; i-- {
		f.closers[i]()
	}
	f.closers = nil
}

// MaxHeaderBytes bounds a request's headers; larger ones are answered 431.
const MaxHeaderBytes = 64 << 10

// Run serves h until ctx is done, then stops accepting, lets in-flight requests finish
// within the drain timeout, and returns.
func Run(ctx context.Context, cfg config.Serving, h http.Handler, logger *slog.Logger, opts Options) error {
	mux := Probes(h, opts.Ready)

	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// A request's headers and body must arrive within ReadTimeout (request events are
		// at most MAX_BODY_BYTES, 2 MiB): a client trickling its body is cut off.
		ReadTimeout: 30 * time.Second,
		IdleTimeout: 120 * time.Second,
		// CloudEvents' binary mode puts a few attributes, a traceparent and a bearer token in
		// headers: 64 KiB is room for all of them many times over (Go's default is 1 MiB).
		MaxHeaderBytes: MaxHeaderBytes,
		Protocols:      &protocols,
		ErrorLog:       slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port)))
	if err != nil {
		return fmt.Errorf("serving: listen: %w", err)
	}
	if opts.OnListen != nil {
		opts.OnListen(ln.Addr().String())
	}
	logger.Info("listening", "addr", ln.Addr().String())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	logger.Info("draining", "timeout", cfg.DrainTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("serving: drain: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving: %w", err)
	}
	logger.Info("stopped")
	return nil
}

// Probes returns h behind the probe endpoints: GET LivenessPath answers 200 while the
// process runs, GET ReadinessPath 200 once ready (503 with the reason otherwise), and every
// other request reaches h. The kubelet's and Knative's probes are also recognised by their
// headers (knative.dev/pkg/network), whatever path they were given: a GET with the
// kubelet's "kube-probe/" User-Agent (queue-proxy sends it too when it runs the readiness
// probe) is a readiness probe unless it asks for LivenessPath, and one with
// "K-Network-Probe: probe" is Knative's network probe, answered like queue-proxy answers it
// (its K-Network-Hash echoed) once ready. So a probe left without a path, which Kubernetes
// sends to "/", never reaches the function as a request event. Those probes decide routing,
// so they follow ready only until it first passes (readiness.go: readiness does not
// cascade); a GET ReadinessPath without probe headers (the ingress's check for GetStatus)
// asks ready every time.
func Probes(h http.Handler, ready func(ctx context.Context) error) http.Handler {
	started := startedOnce(ready)
	readiness := func(w http.ResponseWriter, r *http.Request, ready func(ctx context.Context) error) {
		if ready != nil {
			rctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			defer cancel()
			if err := ready(rctx); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ready\n"))
	}
	// Two fixed paths, two headers and the function: a switch, not a ServeMux.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		probe := r.Method == http.MethodGet || r.Method == http.MethodHead
		switch {
		case probe && r.Header.Get(network.ProbeHeaderName) == network.ProbeHeaderValue:
			if hash := r.Header.Get(network.HashHeaderName); hash != "" {
				w.Header().Set(network.HashHeaderName, hash)
			}
			readiness(w, r, started)
		case r.URL.Path == LivenessPath:
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte("ok\n"))
		case probe && network.IsKubeletProbe(r):
			readiness(w, r, started)
		case r.URL.Path == ReadinessPath:
			readiness(w, r, ready)
		default:
			h.ServeHTTP(w, r)
		}
	})
}

// Commit is the source revision the binary was built from, as Knative reports its own
// (knative.dev/pkg/changeset): the VCS revision Go stamped into the build, 7 hex digits,
// "-dirty" when the tree had uncommitted changes; "unknown" when built without VCS stamping
// (`go run`, `go test`, GOFLAGS=-buildvcs=false). `make build` and `make images` stamp it.
func Commit() string { return changeset.Get() }

// NewLogger returns the JSON logger every binary uses, tagged with the commit (Knative's
// convention: every line of a Knative component carries it, so the first line a binary
// logs at start says what runs) and with the Knative service and revision.
func NewLogger(w io.Writer, cfg config.Serving, component string) *slog.Logger {
	var level slog.Level
	switch strings.ToLower(cfg.LogLevel) {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	l := slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})).With("component", component, "commit", Commit())
	if cfg.Service != "" {
		l = l.With("k_service", cfg.Service)
	}
	if cfg.Revision != "" {
		l = l.With("k_revision", cfg.Revision)
	}
	return l
}

// Main is every binary's main: it runs run with the process's environment and stdout, and
// exits 1 with the error if run fails. The context is Knative's shutdown context
// (knative.dev/pkg/signals): done at the first SIGTERM (Knative's stop signal) or SIGINT,
// so run drains; a second signal exits at once (status 1), without waiting for the drain.
// Call it once per process.
func Main(name string, run func(ctx context.Context, getenv func(string) string, stdout io.Writer) error) {
	if err := run(signals.NewContext(), os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}
