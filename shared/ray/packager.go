package ray

import (
	"context"
	"sync"
	"time"
)

// DefaultFreshFor is how long a Packager trusts a successful check when NewPackager gets
// a non-positive freshFor. It must stay well below Ray's package pin time (about 600 s).
const DefaultFreshFor = 60 * time.Second

// Packager makes sure one GCS package (normally PayloadPackage) is present in the cluster
// before jobs reference it as their working_dir.
//
// Ray deletes a package nobody references once its pin expires (about ten minutes after
// the last upload or existence check), so the Packager re-checks when its last successful
// check is older than freshFor: a GET (which also re-pins the package), and a PUT when the
// package is missing. Concurrent callers share one check; failures are not remembered, so
// the next call checks again. A Packager is safe for concurrent use.
//
// A head restarted without GCS fault tolerance has lost every uploaded package, however
// fresh the last check. So a check also stops counting once the Client has seen the
// dashboard not answer since it began (Client.Epoch moved: a failure, or the breaker
// opening): the next WorkingDir after Ray comes back checks, and re-uploads if needed.
type Packager struct {
	c        *Client
	name     string
	data     []byte
	freshFor time.Duration
	now      func() time.Time // time.Now; replaced in tests

	mu        sync.Mutex
	checkedAt time.Time // start of the last successful check; zero when none counts
	epoch     uint64    // the Client's Epoch when that check started
	gen       uint64    // incremented by Invalidate
	flight    *flight   // the check in progress, if any
}

// flight is one shared check; done is closed once err is set.
type flight struct {
	done chan struct{}
	err  error
}

// NewPackager returns a Packager that keeps the package name (e.g. "_ray_pkg_<hex>.zip")
// with contents data present through c, which must not be nil. A non-positive freshFor
// means DefaultFreshFor. It makes no request.
func NewPackager(c *Client, name string, data []byte, freshFor time.Duration) *Packager {
	if freshFor <= 0 {
		freshFor = DefaultFreshFor
	}
	return &Packager{c: c, name: name, data: data, freshFor: freshFor, now: time.Now}
}

// WorkingDir returns the package's URI, "gcs://<name>", for runtime_env.working_dir, after
// making sure the package is in the cluster: without any request when the last
// successful check is fresh, otherwise by joining (or starting) the shared check.
//
// The shared check runs detached from any one caller, bounded by the Client's per-call
// timeout for each request, so a caller giving up does not fail the others. Errors are
// those of Client.PackageExists and Client.UploadPackage (domain.ErrUnavailable,
// domain.ErrUnauthenticated, domain.ErrDeadline, domain.ErrInvalid), or, when ctx ends
// while waiting, an error wrapping domain.ErrDeadline or context.Canceled.
func (p *Packager) WorkingDir(ctx context.Context) (string, error) {
	uri := "gcs://" + p.name
	p.mu.Lock()
	if !p.checkedAt.IsZero() && p.now().Sub(p.checkedAt) < p.freshFor && p.c.Epoch() == p.epoch {
		p.mu.Unlock()
		return uri, nil
	}
	f := p.flight
	if f == nil {
		f = &flight{done: make(chan struct{})}
		p.flight = f
		go p.check(context.WithoutCancel(ctx), f, p.gen)
	}
	p.mu.Unlock()

	select {
	case <-f.done:
		if f.err != nil {
			return "", f.err
		}
		return uri, nil
	case <-ctx.Done():
		return "", contextError(ctx, "ensure package "+p.name)
	}
}

// Invalidate forgets the last successful check, so the next WorkingDir checks (and if
// needed uploads) again. Use it when a job failed because its working_dir package was
// missing. A check already running when Invalidate is called still answers its waiters
// but is not remembered as fresh.
func (p *Packager) Invalidate() {
	p.mu.Lock()
	p.checkedAt = time.Time{}
	p.gen++
	p.mu.Unlock()
}

// check runs one GET (and PUT if missing), records the outcome and releases the waiters.
func (p *Packager) check(ctx context.Context, f *flight, gen uint64) {
	started, epoch := p.now(), p.c.Epoch()
	err := p.ensure(ctx)

	p.mu.Lock()
	if err == nil && gen == p.gen {
		p.checkedAt = started // measured from the start: the pin began no later than that
		p.epoch = epoch       // likewise: a failure during the check leaves it unproven
	}
	p.flight = nil
	p.mu.Unlock()

	f.err = err
	close(f.done)
}

func (p *Packager) ensure(ctx context.Context) error {
	return p.c.EnsurePackage(ctx, Package{Name: p.name, Data: p.data})
}
