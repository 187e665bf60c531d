package ray

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The breaker and retry wrapper must cost nothing next to an HTTP round trip. Compare, in
// one run:
//
//	go test ./shared/ray/ -run '^$' -bench 'Job|BreakerOpen' -count 6
//
// BenchmarkJobDirect is the path before the wrapper (one attempt under the per-call
// timeout, then decoding); BenchmarkJobWithBreaker is Client.Job with the default retries
// and breaker; BenchmarkJobOverhead interleaves both and reports the ratio, the figure to
// quote on a loaded machine. BenchmarkBreakerOpen is what a call costs while the breaker
// is open.

const benchJob = `{"type":"SUBMISSION","submission_id":"s-1","status":"RUNNING","entrypoint":"python -m x",` +
	`"start_time":1795763729695,"metadata":{"ray_executor":"1","kind":"deliberation"}}`

func benchClient(b *testing.B, cfg Config) *Client {
	b.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, benchJob)
	}))
	b.Cleanup(srv.Close)
	cfg.Address = srv.URL
	c, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// jobDirect is Client.Job as it was before retries and the breaker: one exchange, decoded.
func (c *Client) jobDirect(ctx context.Context, id string) (JobDetails, error) {
	op := "get job " + id
	seg, err := segment(op, "job id", id)
	if err != nil {
		return JobDetails{}, err
	}
	a := c.once(ctx, request{op: op, method: http.MethodGet, path: "/api/jobs/" + seg}, []int{http.StatusOK})
	if a.err != nil {
		return JobDetails{}, a.err
	}
	var j jobDetailsJSON
	if err := decode(op, a.resp.body, &j); err != nil {
		return JobDetails{}, err
	}
	return j.details(), nil
}

func BenchmarkJobDirect(b *testing.B) {
	c := benchClient(b, Config{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.jobDirect(ctx, "s-1"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkJobWithBreaker(b *testing.B) {
	c := benchClient(b, Config{})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Job(ctx, "s-1"); err != nil {
			b.Fatal(err)
		}
	}
}

// The parallel pair shows the breaker's shared state does not contend under load.
func BenchmarkJobDirectParallel(b *testing.B) {
	c := benchClient(b, Config{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.jobDirect(context.Background(), "s-1"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkJobWithBreakerParallel(b *testing.B) {
	c := benchClient(b, Config{})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Job(context.Background(), "s-1"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkBreakerOpen(b *testing.B) {
	c := benchClient(b, Config{BreakerCooldown: time.Hour})
	c.breaker.mu.Lock()
	c.breaker.open()
	c.breaker.mu.Unlock()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Job(ctx, "s-1"); err == nil {
			b.Fatal("got nil, want the open breaker's error")
		}
	}
}

// BenchmarkJobOverhead interleaves the two paths call by call against the same server, so
// load from other processes falls on both alike, and reports their median times and the
// ratio of the medians (wrapped/direct).
// The in-memory case replaces the network with a canned answer, leaving only the client's
// own work, where the wrapper's share is largest.
func BenchmarkJobOverhead(b *testing.B) {
	b.Run("httptest", func(b *testing.B) { benchOverhead(b, benchClient(b, Config{})) })
	b.Run("in-memory", func(b *testing.B) {
		c, err := New(Config{Address: "http://ray-head:8265", HTTPClient: &http.Client{Transport: canned{}}})
		if err != nil {
			b.Fatal(err)
		}
		benchOverhead(b, c)
	})
}

// canned answers every request with benchJob without any I/O.
type canned struct{}

func (canned) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Request: r,
		Body: io.NopCloser(strings.NewReader(benchJob)), ContentLength: int64(len(benchJob))}, nil
}

// benchOverhead reports medians, not means: on a shared machine a preemption lands on one
// call and would swamp a mean.
func benchOverhead(b *testing.B, c *Client) {
	ctx := context.Background()
	var direct, wrapped []time.Duration
	i := 0
	for b.Loop() {
		for k := range 2 {
			start := time.Now()
			var err error
			if (i+k)%2 == 0 {
				_, err = c.jobDirect(ctx, "s-1")
				direct = append(direct, time.Since(start))
			} else {
				_, err = c.Job(ctx, "s-1")
				wrapped = append(wrapped, time.Since(start))
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		i++
	}
	d, w := median(direct), median(wrapped)
	b.ReportMetric(float64(d.Nanoseconds()), "direct-ns/call")
	b.ReportMetric(float64(w.Nanoseconds()), "wrapped-ns/call")
	b.ReportMetric(float64(w)/float64(d), "ratio")
}
