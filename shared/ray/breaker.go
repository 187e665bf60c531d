package ray

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// Circuit breaker defaults, used when Config leaves them zero.
const (
	DefaultBreakerFailures = 5
	DefaultBreakerCooldown = 5 * time.Second
)

// BreakerState is the state of a Client's circuit breaker, for readiness checks and metrics.
type BreakerState int32

// Breaker states. Closed lets every call through; Open fails every call at once; HalfOpen
// (the cooldown is over) lets the next call through as a probe of the dashboard.
const (
	BreakerClosed BreakerState = iota
	BreakerOpen
	BreakerHalfOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerOpen:
		return "open"
	case BreakerHalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("BreakerState(%d)", int32(s))
}

// outcome is what one attempt proved about the dashboard; the breaker and the retry policy
// both decide from it.
type outcome uint8

const (
	// answered: a response Ray meant, whatever its status (2xx, 4xx, 500: Ray's own
	// errors, such as a duplicate submission_id, prove it is there).
	answered outcome = iota
	// down: no answer from Ray: a transport failure, 502/503/504 (a proxy or Ray saying
	// it cannot serve), or our per-call timeout.
	down
	// busy: 429, Ray (or a proxy) answered but asks us to slow down.
	busy
	// callerEnded: the caller's context ended first; it says nothing about Ray.
	callerEnded
)

// breaker is a consecutive-failure circuit breaker around one dashboard. A dead dashboard
// then costs callers microseconds instead of a dial timeout each, and Ray is not hammered
// while it restarts. The closed state, the common case, is read with one atomic load;
// transitions take the mutex. It starts no goroutines: an open breaker turns half-open
// when a call arrives after the cooldown.
type breaker struct {
	threshold int32
	cooldown  time.Duration
	address   string           // for messages
	now       func() time.Time // time.Now; replaced in tests

	state    atomic.Int32 // a BreakerState
	failures atomic.Int32 // consecutive down outcomes while closed

	mu        sync.Mutex
	openUntil time.Time // when the next probe may go
	probing   bool      // a half-open probe is in flight
}

// allow decides whether an attempt may go to the network. probe is true for the one
// attempt a half-open breaker lets through; its outcome must be passed to record. A
// refusal is an error wrapping domain.ErrUnavailable that says when the next probe goes.
func (b *breaker) allow(op string) (probe bool, err error) {
	if b == nil || BreakerState(b.state.Load()) == BreakerClosed {
		return false, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch BreakerState(b.state.Load()) {
	case BreakerClosed:
		return false, nil
	case BreakerOpen:
		if now := b.now(); now.Before(b.openUntil) {
			return false, fmt.Errorf("ray: %s: Ray dashboard %s is unreachable (circuit breaker open after %d "+
				"consecutive failed calls); not calling it until the next probe in %s: %w",
				op, b.address, b.threshold, b.openUntil.Sub(now).Round(time.Millisecond), domain.ErrUnavailable)
		}
		b.state.Store(int32(BreakerHalfOpen))
	}
	if b.probing {
		return false, fmt.Errorf("ray: %s: Ray dashboard %s is unreachable (circuit breaker half-open); "+
			"a probe call is in flight: %w", op, b.address, domain.ErrUnavailable)
	}
	b.probing = true
	return true, nil
}

// record takes the outcome of an attempt allow let through.
func (b *breaker) record(probe bool, o outcome) {
	if b == nil {
		return
	}
	switch o {
	case answered, busy:
		if probe {
			b.mu.Lock()
			b.probing = false
			b.failures.Store(0)
			b.state.Store(int32(BreakerClosed))
			b.mu.Unlock()
			return
		}
		if b.failures.Load() != 0 {
			b.failures.Store(0)
		}
	case down:
		if probe {
			b.mu.Lock()
			b.probing = false
			b.open()
			b.mu.Unlock()
			return
		}
		if b.failures.Add(1) >= b.threshold {
			b.mu.Lock()
			// Concurrent failures may all cross the threshold; only the first opens, and a
			// call admitted before the breaker opened does not extend the cooldown.
			if BreakerState(b.state.Load()) == BreakerClosed {
				b.open()
			}
			b.mu.Unlock()
		}
	case callerEnded:
		if probe {
			// The probe proved nothing: let the next call probe instead of staying stuck.
			b.mu.Lock()
			b.probing = false
			b.mu.Unlock()
		}
	}
}

// open starts a cooldown. The caller holds b.mu.
func (b *breaker) open() {
	b.openUntil = b.now().Add(b.cooldown)
	b.state.Store(int32(BreakerOpen))
}

// State reports the breaker's state; an open breaker whose cooldown is over is HalfOpen
// (the next call probes).
func (b *breaker) State() BreakerState {
	if b == nil {
		return BreakerClosed
	}
	s := BreakerState(b.state.Load())
	if s != BreakerOpen {
		return s
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if BreakerState(b.state.Load()) == BreakerOpen && !b.now().Before(b.openUntil) {
		return BreakerHalfOpen
	}
	return BreakerState(b.state.Load())
}
