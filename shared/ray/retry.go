package ray

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Retry defaults, used when Config leaves them zero.
const (
	DefaultRetries   = 2
	DefaultRetryBase = 100 * time.Millisecond
)

// maxRetryDelay caps one wait between attempts, whether from the backoff or from a
// Retry-After header: a caller is waiting, and a dashboard down for longer is the
// breaker's business, not the retry loop's.
const maxRetryDelay = time.Second

// backoff returns how long to wait before the retry that follows attempt (0 for the first
// attempt): "full jitter", uniformly random in [0, min(maxRetryDelay, base·2^attempt)], so
// that the replicas that all lost the dashboard at once do not come back in step.
func (c *Client) backoff(attempt int) time.Duration {
	ceiling := maxRetryDelay
	if attempt < 30 && c.retryBase<<attempt < ceiling && c.retryBase<<attempt > 0 {
		ceiling = c.retryBase << attempt
	}
	return time.Duration(rand.Int64N(int64(ceiling) + 1))
}

// retryAfter parses a Retry-After header (delay-seconds or an HTTP date) into a wait;
// zero when absent, unparsable or in the past. The caller caps it.
func retryAfter(h string, now time.Time) time.Duration {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0
	}
	if s, err := strconv.ParseInt(h, 10, 64); err == nil {
		return time.Duration(min(max(s, 0), 86400)) * time.Second // bounded: no overflow
	}
	if t, err := http.ParseTime(h); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// attempt is the result of one exchange with the dashboard.
type attempt struct {
	resp       response
	err        error
	outcome    outcome
	timedOut   bool          // our per-call timeout ended it
	retryAfter time.Duration // from a 429's or 503's Retry-After header
}

// retryWait decides whether a failed attempt number n (from 0) of an idempotent call is
// retried, and after how long. It does not retry what the dashboard answered, what the
// caller ended, or anything once the wait would run past the caller's deadline; after our
// own per-call timeout it retries only when the caller leaves room for another full one.
func (c *Client) retryWait(ctx context.Context, n int, a attempt) (time.Duration, bool) {
	if n >= c.retries || (a.outcome != down && a.outcome != busy) {
		return 0, false
	}
	wait := c.backoff(n)
	if a.retryAfter > 0 {
		wait = min(a.retryAfter, maxRetryDelay)
	}
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl) - wait
		if left <= 0 || (a.timedOut && left < c.timeout) {
			return 0, false
		}
	}
	return wait, true
}

// sleep waits d or until ctx ends, and reports whether the whole wait passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
