package ingress

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Limits bound what one caller may take of one replica, so a runaway client slows only
// itself. A zero field is no limit; LoadConfig refuses zero, so a deployed ingress always
// has all three.
type Limits struct {
	// MaxInflight (CALLER_MAX_INFLIGHT) is how many RPCs a caller may have running at once,
	// open WatchDeliberation streams included.
	MaxInflight int
	// SubmitRate (CALLER_SUBMIT_RATE) is the submissions (the two Execute RPCs) a caller may
	// make per second, on average, ...
	SubmitRate float64
	// SubmitBurst (CALLER_SUBMIT_BURST) ... and at most this many at once after a pause.
	SubmitBurst int
	// MaxHealthWatches (HEALTH_MAX_WATCHES) is how many grpc.health.v1 Watch streams may be
	// open at once on a replica. Health needs no credential and counts against no caller,
	// so this is its bound; behind queue-proxy every peer is the same address, so a bound per
	// peer would be this one.
	MaxHealthWatches int
}

const (
	// maxCallers bounds the per-caller table. Identities are authenticated, so this many at
	// once on one replica means something is wrong; new ones are then refused, not queued.
	maxCallers = 10000
	// sweepEvery is how often idle callers are dropped from the table.
	sweepEvery = time.Minute
	// inflightRetry is the pause suggested to a caller over its concurrency limit: long
	// enough for a typical call to finish.
	inflightRetry = 500 * time.Millisecond
)

// limiter enforces Limits per caller name. One mutex: an admission is a few map and
// arithmetic operations, far below what a call costs downstream.
type limiter struct {
	limits Limits
	now    func() time.Time

	mu        sync.Mutex
	callers   map[string]*callerState
	lastSweep time.Time
}

type callerState struct {
	inflight int
	bucket   *rate.Limiter // nil without a submission rate
	lastUsed time.Time
}

func newLimiter(l Limits) *limiter {
	return &limiter{limits: l, now: time.Now, callers: map[string]*callerState{}}
}

// idleAfter is how long an unused caller stays in the table: at least until its bucket would
// have refilled, so dropping it forgives nothing.
func (l *limiter) idleAfter() time.Duration {
	d := time.Minute
	if l.limits.SubmitRate > 0 {
		if refill := time.Duration(float64(l.limits.SubmitBurst) / l.limits.SubmitRate * float64(time.Second)); refill > d {
			d = refill
		}
	}
	return d
}

// admit counts one call by caller, or refuses it with RESOURCE_EXHAUSTED at once (calls are
// never queued). submit says whether it is a submission. The returned release must be
// called when the call ends.
func (l *limiter) admit(caller string, submit bool) (release func(), err error) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastSweep) >= sweepEvery || (len(l.callers) >= maxCallers && l.callers[caller] == nil) {
		l.sweep(now)
	}
	st := l.callers[caller]
	if st == nil {
		if len(l.callers) >= maxCallers {
			return nil, exhausted(fmt.Sprintf("this replica is serving %d distinct callers, its limit; retry later", maxCallers), sweepEvery)
		}
		st = &callerState{}
		if l.limits.SubmitRate > 0 {
			// A burst below one would refuse every submission forever.
			st.bucket = rate.NewLimiter(rate.Limit(l.limits.SubmitRate), max(l.limits.SubmitBurst, 1))
		}
		l.callers[caller] = st
	}
	st.lastUsed = now
	if l.limits.MaxInflight > 0 && st.inflight >= l.limits.MaxInflight {
		return nil, exhausted(fmt.Sprintf("caller %q is over the per-caller concurrency limit (%d calls at once); retry when one of its calls has finished",
			caller, l.limits.MaxInflight), inflightRetry)
	}
	if submit && st.bucket != nil {
		r := st.bucket.ReserveN(now, 1)
		if d := r.DelayFrom(now); d > 0 {
			r.CancelAt(now)
			d = retryAfter(d)
			return nil, exhausted(fmt.Sprintf("caller %q is over the per-caller submission rate limit (%g/s, bursts of %d); retry in %s",
				caller, l.limits.SubmitRate, l.limits.SubmitBurst, d), d)
		}
	}
	st.inflight++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			st.inflight--
			st.lastUsed = l.now()
			l.mu.Unlock()
		})
	}, nil
}

// retryAfter rounds a wait up, to the millisecond below a second and to the second above:
// a hint is read by people too, and waiting a little longer always works.
func retryAfter(d time.Duration) time.Duration {
	unit := time.Millisecond
	if d >= time.Second {
		unit = time.Second
	}
	return (d + unit - 1).Truncate(unit)
}

// sweep drops callers with nothing running and unused for idleAfter. A caller dropped while
// a release is pending cannot happen: it has a call running.
func (l *limiter) sweep(now time.Time) {
	idle := l.idleAfter()
	for name, st := range l.callers {
		if st.inflight == 0 && now.Sub(st.lastUsed) >= idle {
			delete(l.callers, name)
		}
	}
	l.lastSweep = now
}

// size is the number of callers in the table (tests).
func (l *limiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.callers)
}

// exhausted is RESOURCE_EXHAUSTED with a google.rpc.RetryInfo saying when to try again.
func exhausted(msg string, retry time.Duration) error {
	st := status.New(codes.ResourceExhausted, msg)
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(retry)}); err == nil {
		st = d
	}
	return st.Err()
}
