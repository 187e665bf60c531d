// Package serving runs a function's HTTP server the way Knative expects: on $PORT, with
// HTTP/1.1 and h2c, liveness and readiness endpoints, and a drain of in-flight requests on
// shutdown.
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
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/fleet-ai/ray-executor/shared/config"
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

// Run serves h until ctx is done, then stops accepting, lets in-flight requests finish
// within the drain timeout, and returns.
func Run(ctx context.Context, cfg config.Serving, h http.Handler, logger *slog.Logger, opts Options) error {
	live := func(w http.ResponseWriter) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ok\n"))
	}
	ready := func(w http.ResponseWriter, r *http.Request) {
		if opts.Ready != nil {
			rctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			defer cancel()
			if err := opts.Ready(rctx); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ready\n"))
	}
	// Two fixed paths and the function: a switch, not a ServeMux, on the request path.
	mux := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case LivenessPath:
			live(w)
		case ReadinessPath:
			ready(w, r)
		default:
			h.ServeHTTP(w, r)
		}
	})

	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		Protocols:         &protocols,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
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

// NewLogger returns the JSON logger every binary uses, tagged with the Knative service and
// revision.
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
	l := slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})).With("component", component)
	if cfg.Service != "" {
		l = l.With("k_service", cfg.Service)
	}
	if cfg.Revision != "" {
		l = l.With("k_revision", cfg.Revision)
	}
	return l
}

// Main is every binary's main: it runs run with the process's environment and stdout until
// SIGINT or SIGTERM (Knative's stop signal), and exits 1 with the error if run fails.
func Main(name string, run func(ctx context.Context, getenv func(string) string, stdout io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		stop()
		os.Exit(1)
	}
}
