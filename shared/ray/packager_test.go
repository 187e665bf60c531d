package ray

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// fakeGCS is a stub of the dashboard's package endpoints that counts requests.
type fakeGCS struct {
	gets, puts atomic.Int32
	mu         sync.Mutex
	stored     []byte
	getStatus  int           // answer to GET when nonzero (instead of 200/404 by presence)
	gate       chan struct{} // when non-nil, GET waits for it to close
}

func (f *fakeGCS) handler(t *testing.T, wantPath string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != wantPath {
			t.Errorf("got path %s, want %s", r.URL.Path, wantPath)
		}
		switch r.Method {
		case http.MethodGet:
			f.gets.Add(1)
			f.mu.Lock()
			gate, status, stored := f.gate, f.getStatus, f.stored
			f.mu.Unlock()
			if gate != nil {
				select {
				case <-gate:
				case <-r.Context().Done():
					return
				}
			}
			switch {
			case status != 0:
				w.WriteHeader(status)
			case stored == nil:
				w.WriteHeader(http.StatusNotFound)
			}
		case http.MethodPut:
			f.puts.Add(1)
			b, _ := io.ReadAll(r.Body)
			f.mu.Lock()
			f.stored = b
			f.mu.Unlock()
		default:
			t.Errorf("got method %s, want GET or PUT", r.Method)
		}
	}
}

func (f *fakeGCS) set(fn func(*fakeGCS)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func newTestPackager(t *testing.T, freshFor time.Duration) (*Packager, *fakeGCS, *testenv.Clock) {
	t.Helper()
	const name = "_ray_pkg_0011223344556677.zip"
	gcs := &fakeGCS{}
	// Retries and the breaker off: the counts below are the Packager's own requests.
	c := stub(t, Config{Timeout: 5 * time.Second, Retries: -1, BreakerFailures: -1}, gcs.handler(t, "/api/packages/gcs/"+name))
	clock := testenv.NewClock(time.Unix(1_800_000_000, 0))
	p := NewPackager(c, name, []byte("PK-zip-bytes"), freshFor)
	p.now = clock.Now
	return p, gcs, clock
}

func expectCounts(t *testing.T, step string, gcs *fakeGCS, gets, puts int32) {
	t.Helper()
	if g, p := gcs.gets.Load(), gcs.puts.Load(); g != gets || p != puts {
		t.Errorf("%s: got %d GET and %d PUT, want %d and %d", step, g, p, gets, puts)
	}
}

func TestPackagerSharesOneCheck(t *testing.T) {
	t.Parallel()
	p, gcs, clock := newTestPackager(t, time.Minute)
	gate := make(chan struct{})
	gcs.set(func(f *fakeGCS) { f.gate = gate })

	const callers = 10
	var started, done sync.WaitGroup
	results := make([]string, callers)
	errs := make([]error, callers)
	started.Add(callers)
	done.Add(callers)
	for i := range callers {
		go func() {
			defer done.Done()
			started.Done()
			results[i], errs[i] = p.WorkingDir(context.Background())
		}()
	}
	started.Wait()
	time.Sleep(50 * time.Millisecond) // let the callers reach the shared check
	close(gate)
	done.Wait()

	want := "gcs://_ray_pkg_0011223344556677.zip"
	for i := range callers {
		if errs[i] != nil || results[i] != want {
			t.Errorf("caller %d: got (%q, %v), want (%q, nil)", i, results[i], errs[i], want)
		}
	}
	expectCounts(t, "10 concurrent callers", gcs, 1, 1)
	gcs.set(func(f *fakeGCS) {
		if !bytes.Equal(f.stored, []byte("PK-zip-bytes")) {
			t.Errorf("got uploaded %q, want %q", f.stored, "PK-zip-bytes")
		}
	})

	// Fresh: no request.
	clock.Advance(59 * time.Second)
	if _, err := p.WorkingDir(context.Background()); err != nil {
		t.Fatalf("fresh call: got %v, want nil", err)
	}
	expectCounts(t, "fresh cached result", gcs, 1, 1)

	// Stale: one GET, the package is there, no PUT.
	clock.Advance(2 * time.Second)
	if _, err := p.WorkingDir(context.Background()); err != nil {
		t.Fatalf("stale call: got %v, want nil", err)
	}
	expectCounts(t, "stale result", gcs, 2, 1)

	// Invalidate forces a GET even though the result is fresh.
	p.Invalidate()
	if _, err := p.WorkingDir(context.Background()); err != nil {
		t.Fatalf("after Invalidate: got %v, want nil", err)
	}
	expectCounts(t, "after Invalidate", gcs, 3, 1)

	// The package vanished (Ray let its pin expire): Invalidate, then GET 404 and PUT.
	gcs.set(func(f *fakeGCS) { f.stored = nil })
	p.Invalidate()
	if _, err := p.WorkingDir(context.Background()); err != nil {
		t.Fatalf("after the package vanished: got %v, want nil", err)
	}
	expectCounts(t, "package vanished", gcs, 4, 2)
}

func TestPackagerDoesNotCacheFailures(t *testing.T) {
	t.Parallel()
	p, gcs, _ := newTestPackager(t, time.Minute)
	gcs.set(func(f *fakeGCS) { f.getStatus = http.StatusServiceUnavailable })
	for i := 1; i <= 2; i++ {
		if _, err := p.WorkingDir(context.Background()); !errors.Is(err, domain.ErrUnavailable) {
			t.Fatalf("call %d: got %v, want ErrUnavailable", i, err)
		}
		expectCounts(t, "failing GET", gcs, int32(i), 0)
	}
	gcs.set(func(f *fakeGCS) { f.getStatus = 0 })
	if _, err := p.WorkingDir(context.Background()); err != nil {
		t.Fatalf("after recovery: got %v, want nil", err)
	}
	expectCounts(t, "after recovery", gcs, 3, 1)
}

func TestPackagerWaiterHonoursContext(t *testing.T) {
	t.Parallel()
	p, gcs, _ := newTestPackager(t, time.Minute)
	gate := make(chan struct{})
	gcs.set(func(f *fakeGCS) { f.gate = gate })

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := p.WorkingDir(ctx)
	if !errors.Is(err, domain.ErrDeadline) {
		t.Errorf("deadline while waiting: got %v, want ErrDeadline", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("got a wait of %s, want it to end at the caller's deadline", d)
	}

	cctx, ccancel := context.WithCancel(context.Background())
	ccancel()
	if _, err := p.WorkingDir(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled while waiting: got %v, want context.Canceled", err)
	}

	// The detached check goes on after its callers left, and its success is remembered.
	close(gate)
	deadline := time.Now().Add(5 * time.Second)
	for gcs.puts.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	waitIdle(t, p)
	if _, err := p.WorkingDir(context.Background()); err != nil {
		t.Fatalf("after the check finished: got %v, want nil", err)
	}
	expectCounts(t, "after abandoned check", gcs, 1, 1)
}

func TestPackagerInvalidateDuringCheck(t *testing.T) {
	t.Parallel()
	p, gcs, _ := newTestPackager(t, time.Minute)
	gcs.set(func(f *fakeGCS) { f.stored = []byte("old") })
	gate := make(chan struct{})
	gcs.set(func(f *fakeGCS) { f.gate = gate })

	errc := make(chan error, 1)
	go func() { _, err := p.WorkingDir(context.Background()); errc <- err }()
	for gcs.gets.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	p.Invalidate() // the GET in flight started before this: its answer must not count as fresh
	close(gate)
	if err := <-errc; err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	if _, err := p.WorkingDir(context.Background()); err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	expectCounts(t, "check after Invalidate during a check", gcs, 2, 0)
}

func TestNewPackagerDefaultFreshness(t *testing.T) {
	t.Parallel()
	for _, d := range []time.Duration{0, -time.Second} {
		if p := NewPackager(nil, "n", nil, d); p.freshFor != DefaultFreshFor {
			t.Errorf("freshFor %s: got %s, want %s", d, p.freshFor, DefaultFreshFor)
		}
	}
}

// waitIdle waits until p has no check in flight.
func waitIdle(t *testing.T, p *Packager) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		idle := p.flight == nil
		p.mu.Unlock()
		if idle {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("got a check still in flight after 5s, want it finished")
}
