//go:build ray

package ray

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// rayProxy forwards HTTP to the real Ray head from one fixed local address that the test
// can take down and bring back (a head restarting, seen from the client), counting the
// requests it forwards.
type rayProxy struct {
	t     *testing.T
	addr  string // host:port, kept across down/up
	proxy *httputil.ReverseProxy

	mu     sync.Mutex
	srv    *http.Server
	counts map[string]int // "METHOD /path" -> requests forwarded
}

func newRayProxy(t *testing.T) *rayProxy {
	t.Helper()
	target, err := url.Parse(testenv.RayAddress(t))
	if err != nil {
		t.Fatal(err)
	}
	p := &rayProxy{t: t, proxy: httputil.NewSingleHostReverseProxy(target), counts: map[string]int{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = l.Addr().String()
	p.serve(l)
	t.Cleanup(p.down)
	return p
}

func (p *rayProxy) URL() string { return "http://" + p.addr }

func (p *rayProxy) serve(l net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.counts[r.Method+" "+r.URL.Path]++
		p.mu.Unlock()
		p.proxy.ServeHTTP(w, r)
	})}
	p.mu.Lock()
	p.srv = srv
	p.mu.Unlock()
	go srv.Serve(l)
}

// down closes the listener and every connection: new calls are refused.
func (p *rayProxy) down() {
	p.mu.Lock()
	srv := p.srv
	p.srv = nil
	p.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// up listens on the same address again.
func (p *rayProxy) up() {
	p.t.Helper()
	var l net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if l, err = net.Listen("tcp", p.addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		p.t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.serve(l)
}

func (p *rayProxy) count(method, path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[method+" "+path]
}

// TestRealRayResilience runs the retry and breaker paths against the real Ray head.
func TestRealRayResilience(t *testing.T) {
	suffix := randomSuffix(t)

	t.Run("answers are not retried and keep the breaker closed", func(t *testing.T) {
		t.Parallel()
		p := newRayProxy(t)
		c, err := New(Config{Address: p.URL(), Token: testenv.RayToken(t), Timeout: 30 * time.Second}) // retries and breaker at their defaults
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if v, err := c.Version(ctx); err != nil || v.RayVersion == "" {
			t.Fatalf("Version: got (%+v, %v), want a version", v, err)
		}
		id := "no-such-job-" + suffix
		for range 2 * DefaultBreakerFailures {
			if _, err := c.Job(ctx, id); !errors.Is(err, domain.ErrNotFound) || sentinelCount(err) != 1 {
				t.Fatalf("Job: got %v, want only ErrNotFound", err)
			}
		}
		if got := p.count("GET", "/api/jobs/"+id); got != 2*DefaultBreakerFailures {
			t.Errorf("got %d GETs of the unknown job, want %d: a 404 is an answer, not retried", got, 2*DefaultBreakerFailures)
		}
		name := "_ray_pkg_none" + strings.ReplaceAll(suffix, "-", "") + ".zip"
		if ok, err := c.PackageExists(ctx, name); ok || err != nil {
			t.Errorf("PackageExists: got (%v, %v), want (false, nil)", ok, err)
		}
		if got := c.Breaker(); got != BreakerClosed {
			t.Errorf("got breaker %s, want closed: every call was answered", got)
		}
		if got := c.Epoch(); got != 0 {
			t.Errorf("got epoch %d, want 0", got)
		}
	})

	t.Run("packager re-checks after the breaker saw Ray go away", func(t *testing.T) {
		t.Parallel()
		p := newRayProxy(t)
		const cooldown = 300 * time.Millisecond
		c, err := New(Config{Address: p.URL(), Token: testenv.RayToken(t), Timeout: 30 * time.Second, RetryBase: time.Millisecond,
			BreakerFailures: 2, BreakerCooldown: cooldown})
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		name := "_ray_pkg_brk" + strings.ReplaceAll(suffix, "-", "") + ".zip"
		path := "/api/packages/gcs/" + name
		data := testZip(t, "brk", "# "+suffix+"\n")
		pk := NewPackager(c, name, data, time.Hour) // only the breaker can make it check again
		expect := func(step string, gets, puts int) {
			t.Helper()
			if g, u := p.count("GET", path), p.count("PUT", path); g != gets || u != puts {
				t.Errorf("%s: got %d GET and %d PUT of the package through the proxy, want %d and %d", step, g, u, gets, puts)
			}
		}
		for range 2 {
			if wd, err := pk.WorkingDir(ctx); err != nil || wd != "gcs://"+name {
				t.Fatalf("WorkingDir: got (%q, %v), want (%q, nil)", wd, err, "gcs://"+name)
			}
		}
		expect("uploaded, then fresh", 1, 1)

		p.down()
		_, err = c.Version(ctx) // refused, retried, and the second refusal opens the breaker
		if !errors.Is(err, domain.ErrUnavailable) || sentinelCount(err) != 1 {
			t.Fatalf("Version with Ray gone: got %v, want only ErrUnavailable", err)
		}
		if got := c.Breaker(); got != BreakerOpen {
			t.Fatalf("got breaker %s, want open", got)
		}
		start := time.Now()
		_, err = pk.WorkingDir(ctx)
		if d := time.Since(start); d > 50*time.Millisecond {
			t.Errorf("WorkingDir with the breaker open: took %s, want an answer at once", d)
		}
		if !errors.Is(err, domain.ErrUnavailable) || !strings.Contains(err.Error(), "unreachable") {
			t.Errorf("WorkingDir with the breaker open: got %v, want ErrUnavailable saying Ray is unreachable", err)
		}

		p.up()
		time.Sleep(cooldown)
		if wd, err := pk.WorkingDir(ctx); err != nil || wd != "gcs://"+name {
			t.Fatalf("WorkingDir after Ray came back: got (%q, %v), want (%q, nil)", wd, err, "gcs://"+name)
		}
		// The real head kept the package (it did not restart), so the check finds it; a
		// restarted head would answer 404 and get the PUT (TestPackagerRechecksAfterRayWentAway).
		expect("after the breaker saw Ray go away", 2, 1)
		if got := c.Breaker(); got != BreakerClosed {
			t.Errorf("got breaker %s after a successful probe, want closed", got)
		}
		if _, err := pk.WorkingDir(ctx); err != nil {
			t.Fatalf("WorkingDir: got %v, want nil", err)
		}
		expect("fresh again", 2, 1)
		if ok, err := c.PackageExists(ctx, name); !ok || err != nil {
			t.Errorf("PackageExists: got (%v, %v), want (true, nil)", ok, err)
		}
	})
}
