package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/config"
)

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// running is a Run in progress.
type running struct {
	addr   string
	cancel context.CancelFunc
	done   chan error // receives Run's result
}

// start runs Run (on 127.0.0.1 unless cfg names a host) until the test ends or cancel is
// called.
func start(t *testing.T, cfg config.Serving, h http.Handler, opts Options) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	opts.OnListen = func(addr string) { addrc <- addr }
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, h, discard, opts) }()
	r := &running{cancel: cancel, done: done}
	select {
	case r.addr = <-addrc:
	case err := <-done:
		cancel()
		t.Fatalf("Run: got %v before listening, want it to serve", err)
	case <-time.After(5 * time.Second):
		cancel()
		t.Fatal("Run: OnListen not called within 5s")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("Run: still running 10s after cancel")
		}
	})
	return r
}

func defaultCfg() config.Serving {
	return config.Serving{Port: 0, Host: "127.0.0.1", DrainTimeout: 5 * time.Second}
}

// wait returns Run's result, failing the test if it takes longer than d.
func (r *running) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // keep it for Cleanup
		return err
	case <-time.After(d):
		t.Fatalf("Run: did not return within %v of cancel", d)
		return nil
	}
}

func http1Client() *http.Client {
	var p http.Protocols
	p.SetHTTP1(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 10 * time.Second}
}

func h2cClient() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 10 * time.Second}
}

type result struct {
	status int
	proto  int
	body   string
	err    error
}

func get(c *http.Client, url string) result {
	resp, err := c.Get(url)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, proto: resp.ProtoMajor, body: string(b), err: err}
}

// appHandler answers every request with 200 "app <path>" and marks it.
var appHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-App", "1")
	fmt.Fprintf(w, "app %s", r.URL.Path)
})

func TestRunServesHandlerAndProbes(t *testing.T) {
	r := start(t, defaultCfg(), appHandler, Options{})
	c := http1Client()
	defer c.CloseIdleConnections()
	tests := []struct {
		path       string
		wantStatus int
		wantBody   string
	}{
		{"/", 200, "app /"},
		{"/some/path", 200, "app /some/path"},
		{"/healthzz", 200, "app /healthzz"},
		{LivenessPath, 200, "ok\n"},
		{ReadinessPath, 200, "ready\n"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			res := get(c, "http://"+r.addr+tt.path)
			if res.err != nil {
				t.Fatalf("GET %s: %v", tt.path, res.err)
			}
			if res.status != tt.wantStatus || res.body != tt.wantBody {
				t.Errorf("GET %s: got %d %q, want %d %q", tt.path, res.status, res.body, tt.wantStatus, tt.wantBody)
			}
		})
	}
	if LivenessPath != "/healthz" || ReadinessPath != "/readyz" {
		t.Errorf("probe paths: got %q %q, want /healthz /readyz", LivenessPath, ReadinessPath)
	}
}

// Headers are bounded: 100 KiB of them is refused (431) before the handler runs.
func TestRunBoundsHeaders(t *testing.T) {
	r := start(t, defaultCfg(), appHandler, Options{})
	req, _ := http.NewRequest(http.MethodGet, "http://"+r.addr+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("x", 100<<10))
	resp, err := http1Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || resp.Header.Get("X-App") != "" {
		t.Errorf("100 KiB of headers: got %d (handler ran: %v), want 431", resp.StatusCode, resp.Header.Get("X-App") != "")
	}
	req.Header.Set("X-Big", strings.Repeat("x", 8<<10))
	if resp, err := http1Client().Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("8 KiB of headers: %v %v, want 200", resp, err)
	} else {
		resp.Body.Close()
	}
}

func TestRunReadiness(t *testing.T) {
	tests := []struct {
		name       string
		ready      func(ctx context.Context) error
		wantStatus int
		wantBody   string // substring
	}{
		{"no check", nil, 200, "ready"},
		{"ready", func(context.Context) error { return nil }, 200, "ready"},
		{"not ready", func(context.Context) error { return errors.New("ray dashboard unreachable") }, 503, "not ready: ray dashboard unreachable"},
		{"check gets a deadline", func(ctx context.Context) error {
			dl, ok := ctx.Deadline()
			if !ok || time.Until(dl) > 2*time.Second {
				return fmt.Errorf("deadline %v %v", dl, ok)
			}
			return nil
		}, 200, "ready"},
		{"slow check times out", func(ctx context.Context) error {
			<-ctx.Done()
			return ctx.Err()
		}, 503, "not ready: context deadline exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			calls := atomic.Int32{}
			ready := tt.ready
			if ready != nil {
				ready = func(ctx context.Context) error { calls.Add(1); return tt.ready(ctx) }
			}
			r := start(t, defaultCfg(), appHandler, Options{Ready: ready})
			c := http1Client()
			defer c.CloseIdleConnections()
			res := get(c, "http://"+r.addr+ReadinessPath)
			if res.err != nil {
				t.Fatalf("GET /readyz: %v", res.err)
			}
			if res.status != tt.wantStatus || !strings.Contains(res.body, tt.wantBody) {
				t.Errorf("GET /readyz: got %d %q, want %d containing %q", res.status, res.body, tt.wantStatus, tt.wantBody)
			}
			if tt.ready != nil && calls.Load() != 1 {
				t.Errorf("Ready calls: got %d, want 1", calls.Load())
			}
			// Liveness does not depend on readiness.
			if res := get(c, "http://"+r.addr+LivenessPath); res.status != 200 {
				t.Errorf("GET /healthz: got %d, want 200", res.status)
			}
			if calls.Load() > 1 {
				t.Errorf("Ready calls after /healthz: got %d, want 1", calls.Load())
			}
		})
	}
}

func TestRunH2C(t *testing.T) {
	r := start(t, defaultCfg(), appHandler, Options{})
	tests := []struct {
		name      string
		client    *http.Client
		path      string
		wantProto int
		wantBody  string
	}{
		{"h2c handler", h2cClient(), "/x", 2, "app /x"},
		{"h2c liveness", h2cClient(), LivenessPath, 2, "ok\n"},
		{"h2c readiness", h2cClient(), ReadinessPath, 2, "ready\n"},
		{"http/1.1 handler", http1Client(), "/x", 1, "app /x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer tt.client.CloseIdleConnections()
			res := get(tt.client, "http://"+r.addr+tt.path)
			if res.err != nil {
				t.Fatalf("GET: %v", res.err)
			}
			if res.status != 200 || res.proto != tt.wantProto || res.body != tt.wantBody {
				t.Errorf("GET %s: got %d HTTP/%d %q, want 200 HTTP/%d %q", tt.path, res.status, res.proto, res.body, tt.wantProto, tt.wantBody)
			}
		})
	}
}

func TestRunDrainsInFlightRequests(t *testing.T) {
	tests := []struct {
		name      string
		client    func() *http.Client
		wantProto int
	}{
		{"http/1.1", http1Client, 1},
		{"h2c", h2cClient, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			started := make(chan struct{})
			var finished atomic.Bool
			slow := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(started)
				time.Sleep(500 * time.Millisecond)
				finished.Store(true)
				io.WriteString(w, "slow done")
			})
			r := start(t, defaultCfg(), slow, Options{})
			c := tt.client()
			defer c.CloseIdleConnections()

			resc := make(chan result, 1)
			go func() { resc <- get(c, "http://"+r.addr+"/slow") }()
			select {
			case <-started:
			case <-time.After(5 * time.Second):
				t.Fatal("slow handler not reached within 5s")
			}
			cancelled := time.Now()
			r.cancel()

			err := r.wait(t, 5*time.Second)
			if err != nil {
				t.Errorf("Run: got %v, want nil after a clean drain", err)
			}
			if !finished.Load() {
				t.Errorf("Run returned after %v: got the in-flight request unfinished, want Run to wait for it", time.Since(cancelled))
			}
			res := <-resc
			if res.err != nil || res.status != 200 || res.body != "slow done" || res.proto != tt.wantProto {
				t.Errorf("in-flight request: got %d HTTP/%d %q err %v, want 200 HTTP/%d %q", res.status, res.proto, res.body, res.err, tt.wantProto, "slow done")
			}

			if conn, err := net.DialTimeout("tcp", r.addr, time.Second); err == nil {
				conn.Close()
				t.Errorf("dial %s after Run returned: got a connection, want it refused", r.addr)
			}
			if res := get(tt.client(), "http://"+r.addr+LivenessPath); res.err == nil {
				t.Errorf("GET /healthz after Run returned: got %d, want an error", res.status)
			}
		})
	}
}

func TestRunStopsAcceptingWhileDraining(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	blocked := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "released")
	})
	r := start(t, defaultCfg(), blocked, Options{})
	c := http1Client()
	defer c.CloseIdleConnections()

	resc := make(chan result, 1)
	go func() { resc <- get(c, "http://"+r.addr+"/") }()
	<-started
	r.cancel()

	// The listener closes at once; the in-flight request is still being served.
	deadline := time.Now().Add(3 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", r.addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			close(release)
			t.Fatalf("dial %s while draining: still accepted after 3s, want refused", r.addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case err := <-r.done:
		r.done <- err
		t.Errorf("Run: got %v while a request was in flight, want it to keep draining", err)
	default:
	}
	close(release)
	if res := <-resc; res.err != nil || res.status != 200 || res.body != "released" {
		t.Errorf("in-flight request: got %d %q err %v, want 200 %q", res.status, res.body, res.err, "released")
	}
	if err := r.wait(t, 5*time.Second); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
}

func TestRunDrainTimeout(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	defer close(release)
	stuck := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	cfg := defaultCfg()
	cfg.DrainTimeout = 100 * time.Millisecond
	r := start(t, cfg, stuck, Options{})
	c := http1Client()
	defer c.CloseIdleConnections()
	go get(c, "http://"+r.addr+"/")
	<-started
	began := time.Now()
	r.cancel()
	err := r.wait(t, 5*time.Second)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "drain") {
		t.Errorf("Run: got %v, want a drain error wrapping context.DeadlineExceeded", err)
	}
	if elapsed := time.Since(began); elapsed > 3*time.Second {
		t.Errorf("Run returned %v after cancel, want about the 100ms drain timeout", elapsed)
	}
}

func TestRunIdleShutdownIsQuick(t *testing.T) {
	r := start(t, defaultCfg(), appHandler, Options{})
	c := h2cClient()
	if res := get(c, "http://"+r.addr+"/"); res.status != 200 {
		t.Fatalf("GET: got %d %v, want 200", res.status, res.err)
	}
	// The h2c connection stays open (idle) in the client; shutdown must not wait for it.
	began := time.Now()
	r.cancel()
	if err := r.wait(t, 4*time.Second); err != nil {
		t.Errorf("Run: got %v, want nil", err)
	}
	if elapsed := time.Since(began); elapsed > 2*time.Second {
		t.Errorf("Run returned %v after cancel with only idle connections, want well under 2s", elapsed)
	}
	c.CloseIdleConnections()
}

func TestRunListenError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	tests := []struct {
		name string
		cfg  config.Serving
	}{
		{"port in use", config.Serving{Host: "127.0.0.1", Port: port, DrainTimeout: time.Second}},
		{"port out of range", config.Serving{Host: "127.0.0.1", Port: 70000, DrainTimeout: time.Second}},
		{"invalid host", config.Serving{Host: "256.0.0.1", Port: 0, DrainTimeout: time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			listened := false
			err := Run(ctx, tt.cfg, appHandler, discard, Options{OnListen: func(string) { listened = true }})
			if err == nil || !strings.Contains(err.Error(), "serving: listen") {
				t.Errorf("Run: got %v, want a listen error", err)
			}
			if listened {
				t.Errorf("OnListen: got called, want not called when listening fails")
			}
		})
	}
}

func TestNewLogger(t *testing.T) {
	tests := []struct {
		level       string
		wantDebug   bool
		wantInfo    bool
		wantWarn    bool
		wantErrorOK bool
	}{
		{"debug", true, true, true, true},
		{"DEBUG", true, true, true, true},
		{"info", false, true, true, true},
		{"", false, true, true, true},
		{"verbose", false, true, true, true},
		{"warn", false, false, true, true},
		{"error", false, false, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.level, func(t *testing.T) {
			var buf bytes.Buffer
			l := NewLogger(&buf, config.Serving{LogLevel: tt.level}, "execute")
			l.Debug("d")
			l.Info("i")
			l.Warn("w")
			l.Error("e")
			got := map[string]bool{}
			for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				if line == "" {
					continue
				}
				var rec map[string]any
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("log line %q: got %v, want JSON", line, err)
				}
				if rec["component"] != "execute" {
					t.Errorf("log line %q: got component %v, want execute", line, rec["component"])
				}
				if _, ok := rec["k_service"]; ok {
					t.Errorf("log line %q: got k_service, want none when K_SERVICE is unset", line)
				}
				got[rec["msg"].(string)] = true
			}
			want := map[string]bool{"d": tt.wantDebug, "i": tt.wantInfo, "w": tt.wantWarn, "e": tt.wantErrorOK}
			for msg, w := range want {
				if got[msg] != w {
					t.Errorf("level %q, message %q logged: got %v, want %v", tt.level, msg, got[msg], w)
				}
			}
		})
	}
	t.Run("knative fields", func(t *testing.T) {
		var buf bytes.Buffer
		NewLogger(&buf, config.Serving{Service: "execute", Revision: "execute-00002"}, "execute").Info("x")
		var rec map[string]any
		if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
			t.Fatalf("log %q: %v", buf.String(), err)
		}
		if rec["k_service"] != "execute" || rec["k_revision"] != "execute-00002" {
			t.Errorf("log: got k_service %v k_revision %v, want execute execute-00002", rec["k_service"], rec["k_revision"])
		}
	})
}
