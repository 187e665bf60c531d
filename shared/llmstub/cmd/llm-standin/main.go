// Command llm-standin serves the LLM stand-in on 127.0.0.1 for `make run` when no real
// OpenAI-compatible endpoint is configured. It says so, loudly, at start and on every call.
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fleet-ai/ray-executor/shared/llmstub"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8000", "listen address")
	flag.Parse()
	logger := slog.New(slog.NewJSONHandler(os.Stdout, nil)).With("component", "llm-standin")
	logger.Warn("THIS IS A STAND-IN, NOT AN LLM: answers are canned text. Set LLM_URL to a real OpenAI-compatible endpoint (vLLM) to run real deliberations.", "addr", *addr)
	stub := llmstub.New()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		logger.Warn("stand-in answered a chat completion (not a real LLM)", "path", r.URL.Path)
		stub.ServeHTTP(w, r)
	})
	srv := &http.Server{Addr: *addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("stand-in failed", "error", err.Error())
		os.Exit(1)
	}
}
