package ray

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// sentinelCount counts the sentinels err wraps; the package promises exactly one.
func sentinelCount(err error) int {
	n := 0
	for _, s := range []error{domain.ErrInvalid, domain.ErrNotFound, domain.ErrAlreadyExists, domain.ErrConflict,
		domain.ErrUnavailable, domain.ErrUnauthenticated, domain.ErrDeadline, domain.ErrResourceExhausted,
		domain.ErrPermissionDenied, context.Canceled} {
		if errors.Is(err, s) {
			n++
		}
	}
	return n
}

// median sorts ds and returns its middle value.
func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// script answers the i-th request (from 0) with step(i) and counts the requests.
type script struct {
	hits atomic.Int32
	step func(i int32, w http.ResponseWriter, r *http.Request)
}

func (s *script) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.step(s.hits.Add(1)-1, w, r)
}

// failThen answers n failures made by fail, then body with 200.
func failThen(n int32, fail func(http.ResponseWriter, *http.Request), body string) *script {
	return &script{step: func(i int32, w http.ResponseWriter, r *http.Request) {
		if i < n {
			fail(w, r)
			return
		}
		io.WriteString(w, body)
	}}
}

func status(code int) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

// dropConnection closes the connection without an answer: a transport failure.
func dropConnection(w http.ResponseWriter, _ *http.Request) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	conn.Close()
}

// scripted starts a server running s and a Client for it with cfg.
func scripted(t testing.TB, cfg Config, s *script) *Client {
	t.Helper()
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	cfg.Address = srv.URL
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: got %v, want nil", err)
	}
	return c
}

// fast keeps retry waits short so tests measure counts, not sleeps.
var fast = Config{RetryBase: time.Millisecond, BreakerFailures: -1}

func TestRetryIdempotentCalls(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	calls := []struct {
		name   string
		answer string
		call   func(*Client) error
	}{
		{"version", `{}`, func(c *Client) error { _, err := c.Version(ctx); return err }},
		{"job", `{}`, func(c *Client) error { _, err := c.Job(ctx, "j"); return err }},
		{"jobs", `[]`, func(c *Client) error { _, err := c.Jobs(ctx); return err }},
		{"logs", `{"logs":""}`, func(c *Client) error { _, err := c.Logs(ctx, "j"); return err }},
		{"stop", `{"stopped":true}`, func(c *Client) error { _, err := c.Stop(ctx, "j"); return err }},
		{"delete", `{"deleted":true}`, func(c *Client) error { return c.Delete(ctx, "j") }},
		{"package exists", ``, func(c *Client) error { _, err := c.PackageExists(ctx, "p.zip"); return err }},
		{"upload package", ``, func(c *Client) error { return c.UploadPackage(ctx, "p.zip", []byte("PK")) }},
	}
	failures := []struct {
		name string
		fail func(http.ResponseWriter, *http.Request)
	}{
		{"503", status(503)},
		{"502", status(502)},
		{"504", status(504)},
		{"429", status(429)},
		{"dropped connection", dropConnection},
	}
	for _, call := range calls {
		for _, f := range failures {
			t.Run(call.name+"/"+f.name, func(t *testing.T) {
				t.Parallel()
				s := failThen(2, f.fail, call.answer)
				c := scripted(t, fast, s)
				if err := call.call(c); err != nil {
					t.Fatalf("got %v, want nil after two retries", err)
				}
				if got := s.hits.Load(); got != 3 {
					t.Errorf("got %d requests, want 3 (two failures, then success)", got)
				}
			})
		}
	}
}

func TestRetryGivesUp(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		retries  int
		wantHits int32
	}{{0, 1 + DefaultRetries}, {-1, 1}, {1, 2}, {4, 5}} {
		cfg := fast
		cfg.Retries = tt.retries
		s := failThen(100, status(503), "")
		c := scripted(t, cfg, s)
		_, err := c.Job(context.Background(), "j")
		if !errors.Is(err, domain.ErrUnavailable) || sentinelCount(err) != 1 || !strings.Contains(err.Error(), "HTTP 503") {
			t.Errorf("Retries %d: got %v, want the last 503 as ErrUnavailable", tt.retries, err)
		}
		if got := s.hits.Load(); got != tt.wantHits {
			t.Errorf("Retries %d: got %d requests, want %d", tt.retries, got, tt.wantHits)
		}
	}
}

// TestNoRetryOnAnswers: a status Ray meant is an answer; asking again changes nothing.
func TestNoRetryOnAnswers(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		status int
		body   string
		want   error
	}{
		{400, "bad", domain.ErrInvalid},
		{401, "", domain.ErrUnauthenticated},
		{403, "", domain.ErrUnauthenticated},
		{404, "Job j does not exist", domain.ErrNotFound},
		{405, "", domain.ErrInvalid},
		{409, "", domain.ErrAlreadyExists},
		{500, "RuntimeError: it is in a non-terminal state", domain.ErrUnavailable},
		{500, duplicateBody, domain.ErrAlreadyExists},
	} {
		s := failThen(100, func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(tt.status)
			io.WriteString(w, tt.body)
		}, "")
		c := scripted(t, fast, s)
		_, err := c.Job(context.Background(), "j")
		if !errors.Is(err, tt.want) || sentinelCount(err) != 1 {
			t.Errorf("%d: got %v, want exactly %v", tt.status, err, tt.want)
		}
		if got := s.hits.Load(); got != 1 {
			t.Errorf("%d %.20q: got %d requests, want 1", tt.status, tt.body, got)
		}
	}
}

// TestSubmitNotRetried: a retried submission could run the job twice; Submit makes one
// attempt whatever happened.
func TestSubmitNotRetried(t *testing.T) {
	t.Parallel()
	for _, f := range []struct {
		name string
		fail func(http.ResponseWriter, *http.Request)
	}{{"503", status(503)}, {"502", status(502)}, {"429", status(429)}, {"dropped connection", dropConnection}} {
		s := failThen(1, f.fail, `{"submission_id":"s"}`)
		c := scripted(t, Config{RetryBase: time.Millisecond, Retries: 5}, s)
		_, err := c.Submit(context.Background(), SubmitRequest{Entrypoint: "true"})
		if !errors.Is(err, domain.ErrUnavailable) {
			t.Errorf("%s: got %v, want ErrUnavailable", f.name, err)
		}
		if got := s.hits.Load(); got != 1 {
			t.Errorf("%s: got %d requests, want 1", f.name, got)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	t.Run("honoured", func(t *testing.T) {
		t.Parallel()
		s := failThen(1, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(429)
		}, `{}`)
		c := scripted(t, fast, s) // a backoff alone would wait at most 1 ms
		start := time.Now()
		if _, err := c.Job(context.Background(), "j"); err != nil {
			t.Fatalf("got %v, want nil", err)
		}
		if d := time.Since(start); d < 900*time.Millisecond || d > 3*time.Second {
			t.Errorf("got a call of %s, want about the 1s Retry-After asked for", d)
		}
		if got := s.hits.Load(); got != 2 {
			t.Errorf("got %d requests, want 2", got)
		}
	})
	t.Run("past the caller's deadline", func(t *testing.T) {
		t.Parallel()
		s := failThen(100, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(503)
		}, `{}`)
		c := scripted(t, fast, s)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := c.Job(ctx, "j")
		if !errors.Is(err, domain.ErrUnavailable) || sentinelCount(err) != 1 {
			t.Errorf("got %v, want the 503 as ErrUnavailable", err)
		}
		if d := time.Since(start); d > 250*time.Millisecond {
			t.Errorf("got a call of %s, want an answer at once rather than a wait past the deadline", d)
		}
		if got := s.hits.Load(); got != 1 {
			t.Errorf("got %d requests, want 1", got)
		}
	})
	t.Run("parsing", func(t *testing.T) {
		t.Parallel()
		now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		for _, tt := range []struct {
			h    string
			want time.Duration
		}{
			{"", 0}, {"0", 0}, {"-3", 0}, {"soon", 0}, {" 2 ", 2 * time.Second},
			{"99999999999999999", 86400 * time.Second},
			{now.Add(3 * time.Second).Format(http.TimeFormat), 3 * time.Second},
			{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		} {
			if got := retryAfter(tt.h, now); got != tt.want {
				t.Errorf("retryAfter(%q): got %s, want %s", tt.h, got, tt.want)
			}
		}
	})
}

// TestRetryHonoursCallerDeadline: whatever the jitter draws, no wait runs past the caller's
// deadline, so the answer comes before it.
func TestRetryHonoursCallerDeadline(t *testing.T) {
	t.Parallel()
	s := failThen(1<<30, status(503), "")
	c := scripted(t, Config{RetryBase: time.Second, Retries: 10, BreakerFailures: -1}, s)
	for range 10 {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		start := time.Now()
		_, err := c.Job(ctx, "j")
		d := time.Since(start)
		cancel()
		if sentinelCount(err) != 1 || !errors.Is(err, domain.ErrUnavailable) && !errors.Is(err, domain.ErrDeadline) {
			t.Errorf("got %v, want exactly one of ErrUnavailable or ErrDeadline", err)
		}
		if d > 200*time.Millisecond+150*time.Millisecond { // slack for a loaded machine, not for a wait
			t.Errorf("got a call of %s, want it over by the caller's 200ms deadline", d)
		}
	}
}

// TestCancellationWinsDuringBackoff: a caller leaving mid-wait gets context.Canceled at
// once, not the 503 and not after the wait.
func TestCancellationWinsDuringBackoff(t *testing.T) {
	t.Parallel()
	s := failThen(100, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(503)
	}, `{}`)
	c := scripted(t, fast, s)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.Job(ctx, "j")
	if !errors.Is(err, context.Canceled) || sentinelCount(err) != 1 {
		t.Errorf("got %v, want only context.Canceled", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("got a call of %s, want it to end when the caller cancelled", d)
	}
	if got := s.hits.Load(); got != 1 {
		t.Errorf("got %d requests, want 1", got)
	}
}

// TestPerCallTimeoutRetry: our own timeout is retried only when the caller leaves room for
// another full attempt.
func TestPerCallTimeoutRetry(t *testing.T) {
	t.Parallel()
	hangs := func() *script {
		return &script{step: func(_ int32, _ http.ResponseWriter, r *http.Request) {
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
		}}
	}
	cfg := Config{Timeout: 100 * time.Millisecond, RetryBase: time.Millisecond, BreakerFailures: -1}
	t.Run("no caller deadline", func(t *testing.T) {
		t.Parallel()
		s := hangs()
		c := scripted(t, cfg, s)
		_, err := c.Job(context.Background(), "j")
		if !errors.Is(err, domain.ErrDeadline) || !strings.Contains(err.Error(), "per-call timeout") || sentinelCount(err) != 1 {
			t.Errorf("got %v, want ErrDeadline from the per-call timeout", err)
		}
		if got := s.hits.Load(); got != 3 {
			t.Errorf("got %d requests, want 3", got)
		}
	})
	t.Run("little time left", func(t *testing.T) {
		t.Parallel()
		s := hangs()
		c := scripted(t, cfg, s)
		ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
		defer cancel()
		_, err := c.Job(ctx, "j")
		if !errors.Is(err, domain.ErrDeadline) || sentinelCount(err) != 1 {
			t.Errorf("got %v, want ErrDeadline", err)
		}
		if got := s.hits.Load(); got != 1 {
			t.Errorf("got %d requests, want 1: 50ms left cannot hold another 100ms attempt", got)
		}
	})
}

func TestBackoffJitterBounded(t *testing.T) {
	t.Parallel()
	for _, base := range []time.Duration{time.Millisecond, 100 * time.Millisecond, 5 * time.Second} {
		c, err := New(Config{Address: "http://head:8265", RetryBase: base})
		if err != nil {
			t.Fatal(err)
		}
		for attempt := range 12 {
			ceiling := min(maxRetryDelay, base<<attempt)
			lo, hi := time.Duration(1<<62), time.Duration(0)
			seen := map[time.Duration]bool{}
			for range 2000 {
				d := c.backoff(attempt)
				if d < 0 || d > ceiling {
					t.Fatalf("base %s attempt %d: got %s, want within [0, %s]", base, attempt, d, ceiling)
				}
				lo, hi = min(lo, d), max(hi, d)
				seen[d] = true
			}
			// Full jitter: the draws cover the range rather than cluster at the ceiling.
			if lo > ceiling/5 || hi < ceiling*4/5 || len(seen) < 100 {
				t.Errorf("base %s attempt %d: got draws in [%s, %s], %d distinct; want them spread over [0, %s]",
					base, attempt, lo, hi, len(seen), ceiling)
			}
		}
		if d := c.backoff(1000); d < 0 || d > maxRetryDelay {
			t.Errorf("base %s attempt 1000: got %s, want within [0, %s]", base, d, maxRetryDelay)
		}
	}
}

// breakerClient returns a Client with a breaker of threshold failures and a settable clock,
// and no retries, so each call is one attempt.
func breakerClient(t testing.TB, s *script, failures int) (*Client, *testenv.Clock) {
	t.Helper()
	c := scripted(t, Config{Retries: -1, BreakerFailures: failures, BreakerCooldown: 5 * time.Second}, s)
	clock := testenv.NewClock(time.Unix(1_800_000_000, 0))
	c.breaker.now = clock.Now
	return c, clock
}

// switchable answers 503 while down is set and `{}` otherwise.
func switchable(down *atomic.Bool) *script {
	return &script{step: func(_ int32, w http.ResponseWriter, _ *http.Request) {
		if down.Load() {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, `{}`)
	}}
}

func TestBreakerOpensAfterConsecutiveFailures(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	down.Store(true)
	s := switchable(&down)
	c, _ := breakerClient(t, s, 3)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if got := c.Breaker(); got != BreakerClosed {
			t.Fatalf("before failure %d: got breaker %s, want closed", i, got)
		}
		if _, err := c.Job(ctx, "j"); !strings.Contains(err.Error(), "HTTP 503") {
			t.Fatalf("failure %d: got %v, want the 503", i, err)
		}
	}
	if got := c.Breaker(); got != BreakerOpen {
		t.Fatalf("after 3 failures: got breaker %s, want open", got)
	}
	down.Store(false) // Ray is back, but the breaker must not know before its cooldown
	took := make([]time.Duration, 0, 1000)
	for range cap(took) {
		start := time.Now()
		_, err := c.Job(ctx, "j")
		took = append(took, time.Since(start))
		if !errors.Is(err, domain.ErrUnavailable) || sentinelCount(err) != 1 {
			t.Fatalf("open breaker: got %v, want only ErrUnavailable", err)
		}
		for _, want := range []string{"ray: get job j: ", "unreachable", "next probe in 5s"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("open breaker: got message %q, want it to contain %q", err, want)
			}
		}
	}
	// The median, not the mean: on a loaded machine a preemption can land on any one call.
	if m := median(took); m > 100*time.Microsecond {
		t.Errorf("open breaker: got a median of %s per call, want it to fail in microseconds", m)
	}
	if _, err := c.Submit(ctx, SubmitRequest{Entrypoint: "true"}); !errors.Is(err, domain.ErrUnavailable) {
		t.Errorf("Submit through the open breaker: got %v, want ErrUnavailable", err)
	}
	if got := s.hits.Load(); got != 3 {
		t.Errorf("got %d requests, want the 3 that opened the breaker and none after", got)
	}
}

// TestBreakerCountsOnlyUnanswered: 4xx and Ray's own 500s prove the dashboard answers, and
// any answer resets the count.
func TestBreakerCountsOnlyUnanswered(t *testing.T) {
	t.Parallel()
	var code atomic.Int32
	s := &script{step: func(_ int32, w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(int(code.Load()))
		if code.Load() == 500 {
			io.WriteString(w, duplicateBody)
		}
	}}
	c, _ := breakerClient(t, s, 2)
	for _, st := range []int32{400, 401, 403, 404, 409, 429, 500} {
		code.Store(st)
		for range 5 {
			c.Job(context.Background(), "j")
		}
		if got := c.Breaker(); got != BreakerClosed {
			t.Errorf("after 5 × %d: got breaker %s, want closed", st, got)
		}
	}
	for _, st := range []int32{503, 404, 502, 200, 504} { // never two in a row
		code.Store(st)
		c.Job(context.Background(), "j")
	}
	if got := c.Breaker(); got != BreakerClosed {
		t.Errorf("after interleaved failures: got breaker %s, want closed", got)
	}
	code.Store(502)
	c.Job(context.Background(), "j")
	if got := c.Breaker(); got != BreakerOpen {
		t.Errorf("after two failures in a row: got breaker %s, want open", got)
	}
}

func TestBreakerHalfOpen(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	down.Store(true)
	s := switchable(&down)
	c, clock := breakerClient(t, s, 2)
	ctx := context.Background()
	c.Job(ctx, "j")
	c.Job(ctx, "j")
	expect := func(step string, state BreakerState, hits int32) {
		t.Helper()
		if got := c.Breaker(); got != state {
			t.Errorf("%s: got breaker %s, want %s", step, got, state)
		}
		if got := s.hits.Load(); got != hits {
			t.Errorf("%s: got %d requests, want %d", step, got, hits)
		}
	}
	expect("opened", BreakerOpen, 2)

	clock.Advance(4 * time.Second)
	if _, err := c.Job(ctx, "j"); !strings.Contains(err.Error(), "next probe in 1s") {
		t.Errorf("during the cooldown: got %v, want it to say the probe is 1s away", err)
	}
	expect("during the cooldown", BreakerOpen, 2)

	clock.Advance(time.Second)
	expect("cooldown over", BreakerHalfOpen, 2)
	if _, err := c.Job(ctx, "j"); !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("failed probe: got %v, want the 503", err)
	}
	expect("failed probe re-opens", BreakerOpen, 3)
	if _, err := c.Job(ctx, "j"); !strings.Contains(err.Error(), "next probe in 5s") {
		t.Errorf("after a failed probe: got %v, want a new 5s cooldown", err)
	}
	expect("re-opened", BreakerOpen, 3)

	clock.Advance(5 * time.Second)
	down.Store(false)
	if _, err := c.Job(ctx, "j"); err != nil {
		t.Errorf("successful probe: got %v, want nil", err)
	}
	expect("successful probe closes", BreakerClosed, 4)
	c.Job(ctx, "j")
	expect("closed", BreakerClosed, 5)
}

// TestBreakerOneProbe: while the half-open probe is in flight every other call fails fast,
// and a probe the caller abandoned does not leave the breaker stuck.
func TestBreakerOneProbe(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	down.Store(true)
	gate := make(chan struct{})
	var gated atomic.Bool
	s := &script{step: func(_ int32, w http.ResponseWriter, r *http.Request) {
		if gated.Load() {
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
		if down.Load() {
			w.WriteHeader(503)
			return
		}
		io.WriteString(w, `{}`)
	}}
	c, clock := breakerClient(t, s, 2)
	ctx := context.Background()
	c.Job(ctx, "j")
	c.Job(ctx, "j")
	clock.Advance(5 * time.Second)
	down.Store(false)
	gated.Store(true)

	// An abandoned probe frees the slot for the next call.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := c.Job(cctx, "j"); !errors.Is(err, context.Canceled) || sentinelCount(err) != 1 {
		t.Fatalf("abandoned probe: got %v, want only context.Canceled", err)
	}

	probe := make(chan error, 1)
	go func() { _, err := c.Job(ctx, "j"); probe <- err }()
	for s.hits.Load() < 4 {
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, err := c.Job(ctx, "j")
			if !errors.Is(err, domain.ErrUnavailable) || !strings.Contains(err.Error(), "probe call is in flight") {
				t.Errorf("during the probe: got %v, want ErrUnavailable saying a probe is in flight", err)
			}
		})
	}
	wg.Wait()
	close(gate)
	if err := <-probe; err != nil {
		t.Fatalf("probe: got %v, want nil", err)
	}
	if got, hits := c.Breaker(), s.hits.Load(); got != BreakerClosed || hits != 4 {
		t.Errorf("got breaker %s after %d requests, want closed after 4 (2 failures, 2 probes)", got, hits)
	}
}

// TestRetryStopsAtOpenBreaker: the breaker opening mid-call ends the retries, and the
// caller hears what Ray did rather than the breaker's refusal.
func TestRetryStopsAtOpenBreaker(t *testing.T) {
	t.Parallel()
	s := failThen(1<<30, status(503), "")
	c := scripted(t, Config{Retries: 5, RetryBase: time.Millisecond, BreakerFailures: 2}, s)
	_, err := c.Job(context.Background(), "j")
	if !errors.Is(err, domain.ErrUnavailable) || !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("got %v, want the 503", err)
	}
	if got := s.hits.Load(); got != 2 {
		t.Errorf("got %d requests, want 2 (the breaker opened and refused the other retries)", got)
	}
}

// TestBreakerConcurrent hammers one Client from many goroutines while the dashboard flaps;
// run with -race. Every error keeps to the contract, and once the dashboard is back the
// breaker closes.
func TestBreakerConcurrent(t *testing.T) {
	t.Parallel()
	var down atomic.Bool
	s := switchable(&down)
	c := scripted(t, Config{Retries: 1, RetryBase: time.Millisecond, BreakerFailures: 3,
		BreakerCooldown: 2 * time.Millisecond}, s)
	stop := make(chan struct{})
	flapped := make(chan struct{})
	go func() {
		defer close(flapped)
		for {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
				down.Store(!down.Load())
			}
		}
	}()
	var wg sync.WaitGroup
	var ok, failed atomic.Int32
	end := time.Now().Add(300 * time.Millisecond)
	for g := range 32 {
		wg.Go(func() {
			for i := 0; i < 100 || time.Now().Before(end); i++ {
				var err error
				if (g+i)%2 == 0 {
					_, err = c.Job(context.Background(), "j")
				} else {
					_, err = c.PackageExists(context.Background(), "p.zip")
				}
				switch {
				case err == nil:
					ok.Add(1)
				case !errors.Is(err, domain.ErrUnavailable) || sentinelCount(err) != 1:
					t.Errorf("got %v, want only ErrUnavailable", err)
				default:
					failed.Add(1)
				}
				_ = c.Breaker()
			}
		})
	}
	wg.Wait()
	close(stop)
	<-flapped
	t.Logf("%d calls succeeded, %d failed, %d requests reached the server", ok.Load(), failed.Load(), s.hits.Load())
	if ok.Load() == 0 || failed.Load() == 0 {
		t.Errorf("got %d successes and %d failures, want both while the dashboard flaps", ok.Load(), failed.Load())
	}

	down.Store(false)
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := c.Ready(context.Background()) // a half-open breaker needs a call to probe
		if err == nil && c.Breaker() == BreakerClosed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got breaker %s and Ready %v 2s after the dashboard came back, want closed and nil", c.Breaker(), err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestBreakerFailsFastWithoutNetwork: a dashboard that accepts and drops every connection
// opens the breaker; after that, no call reaches it and each answers in microseconds.
func TestBreakerFailsFastWithoutNetwork(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var accepts atomic.Int32
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			conn.Close()
		}
	}()
	c, err := New(Config{Address: "http://" + l.Addr().String(), RetryBase: time.Millisecond, BreakerFailures: 3,
		BreakerCooldown: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; c.Breaker() != BreakerOpen; i++ {
		if i == 3 {
			t.Fatalf("got breaker %s after 3 calls, want open", c.Breaker())
		}
		if _, err := c.Version(ctx); !errors.Is(err, domain.ErrUnavailable) {
			t.Fatalf("got %v, want ErrUnavailable", err)
		}
	}
	before := accepts.Load()
	if before == 0 {
		t.Fatalf("got no connection, want the failures to have reached the listener")
	}
	took := make([]time.Duration, 0, 1000)
	for range cap(took) {
		start := time.Now()
		if _, err := c.Version(ctx); !errors.Is(err, domain.ErrUnavailable) {
			t.Fatalf("got %v, want ErrUnavailable", err)
		}
		took = append(took, time.Since(start))
	}
	m := median(took)
	time.Sleep(20 * time.Millisecond) // let a stray dial be accepted before counting
	if got := accepts.Load(); got != before {
		t.Errorf("got %d connections after the breaker opened, want none", got-before)
	}
	if m > 100*time.Microsecond { // the median: see TestBreakerOpensAfterConsecutiveFailures
		t.Errorf("got a median of %s per call with the breaker open, want well under a millisecond", m)
	}
	t.Logf("open breaker: median %s per call, %d connections before it opened", m, before)
}

func TestBreakerOff(t *testing.T) {
	t.Parallel()
	s := failThen(1<<30, status(503), "")
	c := scripted(t, Config{Retries: -1, BreakerFailures: -1}, s)
	for range 20 {
		c.Job(context.Background(), "j")
	}
	if got, hits := c.Breaker(), s.hits.Load(); got != BreakerClosed || hits != 20 {
		t.Errorf("got breaker %s after %d requests, want closed and all 20 sent", got, hits)
	}
	if got := c.Epoch(); got != 20 {
		t.Errorf("got epoch %d, want 20: the Packager's signal works without the breaker", got)
	}
}

func TestNewRejectsBadResilienceSettings(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{
		{Address: "http://head:8265", RetryBase: -time.Second},
		{Address: "http://head:8265", BreakerCooldown: -time.Second},
	} {
		if _, err := New(cfg); !errors.Is(err, domain.ErrInvalid) {
			t.Errorf("New(%+v): got %v, want ErrInvalid", cfg, err)
		}
	}
}

// TestEpoch: only unanswered attempts move it.
func TestEpoch(t *testing.T) {
	t.Parallel()
	var code atomic.Int32
	s := &script{step: func(_ int32, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(int(code.Load())) }}
	c := scripted(t, Config{Retries: -1, BreakerFailures: -1}, s)
	for _, tt := range []struct {
		code  int32
		moves bool
	}{{200, false}, {404, false}, {400, false}, {500, false}, {429, false}, {503, true}, {502, true}, {504, true}} {
		code.Store(tt.code)
		before := c.Epoch()
		c.PackageExists(context.Background(), "p.zip")
		if moved := c.Epoch() != before; moved != tt.moves {
			t.Errorf("HTTP %d: got epoch moved %v, want %v", tt.code, moved, tt.moves)
		}
	}
}

// TestPackagerRechecksAfterRayWentAway: a head that restarted has lost the package however
// fresh the last check; the breaker opening (or any unanswered call) makes the Packager
// check and upload again once Ray is back.
func TestPackagerRechecksAfterRayWentAway(t *testing.T) {
	t.Parallel()
	for _, viaBreaker := range []bool{true, false} {
		const name = "_ray_pkg_8899aabbccddeeff.zip"
		gcs := &fakeGCS{}
		var down atomic.Bool
		pkg := gcs.handler(t, "/api/packages/gcs/"+name)
		failures := 2
		if !viaBreaker {
			failures = -1
		}
		c := scripted(t, Config{Retries: -1, BreakerFailures: failures}, &script{step: func(_ int32, w http.ResponseWriter, r *http.Request) {
			if down.Load() {
				w.WriteHeader(http.StatusBadGateway) // the Service in front of a head that is restarting
				return
			}
			pkg(w, r)
		}})
		clock := testenv.NewClock(time.Unix(1_800_000_000, 0))
		if c.breaker != nil {
			c.breaker.now = clock.Now
		}
		p := NewPackager(c, name, []byte("PK-zip-bytes"), time.Hour)
		p.now = clock.Now
		ctx := context.Background()
		if _, err := p.WorkingDir(ctx); err != nil {
			t.Fatalf("first WorkingDir: got %v, want nil", err)
		}
		if _, err := p.WorkingDir(ctx); err != nil {
			t.Fatalf("fresh WorkingDir: got %v, want nil", err)
		}
		expectCounts(t, "fresh", gcs, 1, 1)

		// The head restarts and loses its GCS.
		down.Store(true)
		gcs.set(func(f *fakeGCS) { f.stored = nil })
		for range 2 {
			if _, err := c.Job(ctx, "j"); !errors.Is(err, domain.ErrUnavailable) {
				t.Fatalf("Job while down: got %v, want ErrUnavailable", err)
			}
		}
		if viaBreaker {
			if got := c.Breaker(); got != BreakerOpen {
				t.Fatalf("got breaker %s, want open", got)
			}
			if _, err := p.WorkingDir(ctx); !errors.Is(err, domain.ErrUnavailable) || !strings.Contains(err.Error(), "unreachable") {
				t.Errorf("WorkingDir with the breaker open: got %v, want ErrUnavailable saying Ray is unreachable", err)
			}
			expectCounts(t, "breaker open", gcs, 1, 1)
			clock.Advance(DefaultBreakerCooldown)
		}

		down.Store(false)
		if _, err := p.WorkingDir(ctx); err != nil {
			t.Fatalf("WorkingDir after Ray came back: got %v, want nil", err)
		}
		expectCounts(t, "after Ray came back", gcs, 2, 2)
		if _, err := p.WorkingDir(ctx); err != nil {
			t.Fatalf("WorkingDir: got %v, want nil", err)
		}
		expectCounts(t, "fresh again", gcs, 2, 2)
	}
}
