// Package ray is a small client for the Ray Jobs REST API served by the Ray dashboard
// (http(s)://<head>:8265), plus the packager that ships the Python deliberation payload to
// the cluster as a GCS working_dir package.
//
// Every error a Client returns wraps exactly one of the sentinels in shared/domain
// (ErrInvalid, ErrNotFound, ErrAlreadyExists, ErrUnavailable, ErrUnauthenticated,
// ErrDeadline) or context.Canceled, so callers branch with errors.Is. The mapping lives in
// one place, classify in errors.go.
//
// Ray trouble is an answer, not a hang: idempotent calls are retried with jittered
// exponential backoff when the dashboard does not answer (retry.go), and a circuit breaker
// fails every call at once, without touching the network, after consecutive unanswered
// calls (breaker.go). Both answer domain.ErrUnavailable, which callers retry later.
package ray

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

// DefaultTimeout is the per-call timeout used when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// Limits on how much of a response body is read.
const (
	maxLogsBody  = 64 << 20 // GET /api/jobs/{id}/logs returns the whole log in one JSON string
	maxBody      = 8 << 20  // every other success body
	maxErrorBody = 1 << 20  // error bodies (Ray sends Python tracebacks, a few KiB)
)

// Config configures a Client.
type Config struct {
	// Address is the dashboard address, http(s)://host:port, normally port 8265. It may
	// carry a path prefix (a dashboard behind a reverse proxy). "ray://" addresses are
	// refused: that is the Ray Client protocol (port 10001), which only Python speaks.
	Address string
	// Token, when set, is sent as "Authorization: Bearer <Token>" on every request.
	Token string
	// Timeout bounds every call (context.WithTimeout on top of the caller's context).
	// Zero means DefaultTimeout; negative is invalid.
	Timeout time.Duration
	// HTTPClient is used for all requests. Nil means a client with a pooled, keep-alive
	// transport (see newHTTPClient).
	HTTPClient *http.Client

	// Retries is how many extra attempts an idempotent call (every call but Submit) makes
	// when the dashboard does not answer: a transport failure, 502, 503, 504, 429 or our
	// per-call timeout. Zero means DefaultRetries; negative means none.
	Retries int
	// RetryBase is the backoff ceiling before the first retry; it doubles per retry up to
	// one second, and the actual wait is uniformly random below it. Zero means
	// DefaultRetryBase; negative is invalid.
	RetryBase time.Duration
	// BreakerFailures is how many consecutive unanswered attempts open the circuit breaker.
	// Zero means DefaultBreakerFailures; negative turns the breaker off.
	BreakerFailures int
	// BreakerCooldown is how long an open breaker fails calls before letting one through as
	// a probe. Zero means DefaultBreakerCooldown; negative is invalid.
	BreakerCooldown time.Duration
}

// Client talks to one Ray dashboard. It is safe for concurrent use.
type Client struct {
	base    string // scheme://host[:port][/prefix], without a trailing slash
	token   string
	timeout time.Duration
	// timeoutCause marks our own per-call timeout apart from the caller's deadline; made
	// once, not per call.
	timeoutCause error
	hc           *http.Client

	retries   int // extra attempts for idempotent calls; 0 for none
	retryBase time.Duration
	breaker   *breaker // nil when off

	// epoch counts unanswered attempts (see Epoch).
	epoch atomic.Uint64
}

// New checks cfg and returns a Client. It makes no request. An empty, unparsable or
// non-http(s) Address (including ray://) or a negative Timeout yields an error wrapping
// domain.ErrInvalid.
func New(cfg Config) (*Client, error) {
	base, err := parseAddress(cfg.Address)
	if err != nil {
		return nil, err
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("ray: config: negative timeout %s: %w", cfg.Timeout, domain.ErrInvalid)
	}
	if cfg.RetryBase < 0 || cfg.BreakerCooldown < 0 {
		return nil, fmt.Errorf("ray: config: negative retry base %s or breaker cooldown %s: %w",
			cfg.RetryBase, cfg.BreakerCooldown, domain.ErrInvalid)
	}
	c := &Client{base: base, token: cfg.Token, timeout: cfg.Timeout, hc: cfg.HTTPClient,
		retries: cfg.Retries, retryBase: cmp.Or(cfg.RetryBase, DefaultRetryBase)}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
	}
	switch {
	case c.retries == 0:
		c.retries = DefaultRetries
	case c.retries < 0:
		c.retries = 0
	}
	if cfg.BreakerFailures >= 0 {
		c.breaker = &breaker{
			threshold: int32(min(cmp.Or(cfg.BreakerFailures, DefaultBreakerFailures), math.MaxInt32)),
			cooldown:  cmp.Or(cfg.BreakerCooldown, DefaultBreakerCooldown),
			address:   base,
			now:       time.Now,
		}
	}
	if c.hc == nil {
		c.hc = newHTTPClient()
	}
	c.timeoutCause = fmt.Errorf("%w of %s", errCallTimeout, c.timeout)
	return c, nil
}

// dashboardHint ends every address error: it says what a valid address looks like.
const dashboardHint = "use the Ray dashboard address http(s)://<head>:8265"

func parseAddress(addr string) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return "", fmt.Errorf("ray: config: empty address; %s: %w", dashboardHint, domain.ErrInvalid)
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", fmt.Errorf("ray: config: cannot parse address %q (%v); %s: %w",
			addr, err, dashboardHint, domain.ErrInvalid)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
	case "ray":
		return "", fmt.Errorf("ray: config: address %q uses the Ray Client protocol (ray://, port 10001), "+
			"which only the Python Ray library speaks; this client uses the Jobs REST API, so %s: %w",
			addr, dashboardHint, domain.ErrInvalid)
	default:
		return "", fmt.Errorf("ray: config: address %q must start with http:// or https://; %s: %w",
			addr, dashboardHint, domain.ErrInvalid)
	}
	if u.Host == "" || u.Opaque != "" {
		return "", fmt.Errorf("ray: config: address %q has no host; %s: %w", addr, dashboardHint, domain.ErrInvalid)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("ray: config: address %q must not carry credentials, a query or a fragment "+
			"(put a token in Config.Token); %s: %w", addr, dashboardHint, domain.ErrInvalid)
	}
	u.Scheme = strings.ToLower(u.Scheme)
	return strings.TrimRight(u.String(), "/"), nil
}

// newHTTPClient returns the default HTTP client: the standard transport's dialer, proxy and
// TLS settings with a larger idle pool per host, since all traffic goes to one dashboard.
// It has no overall Timeout; every call is bounded by Config.Timeout through its context.
func newHTTPClient() *http.Client {
	return &http.Client{Transport: telemetry.HTTPTransport(newTransport())} // a client span per attempt
}

// newTransport is the connection pool under the default client.
func newTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 64
	t.MaxIdleConnsPerHost = 32
	t.IdleConnTimeout = 90 * time.Second
	t.ResponseHeaderTimeout = 0 // the per-call context deadline covers it
	t.DisableKeepAlives = false
	return t
}

// errCallTimeout is the context cause when our own per-call timeout (not the caller's
// deadline) ends a call.
var errCallTimeout = errors.New("per-call timeout")

// request is one HTTP exchange.
type request struct {
	op          string // "get job abc", used as the error prefix after "ray: "
	method      string
	path        string // already escaped, starting with "/"
	body        []byte // nil for none
	contentType string
	limit       int64 // max success body bytes; 0 means maxBody
	// idempotent requests are retried (retry.go); repeating them changes nothing more than
	// doing them once did.
	idempotent bool
}

// response is what do hands back for a status the caller asked to see.
type response struct {
	status int
	body   []byte
}

// do performs r: once, or for an idempotent request up to 1+retries times while the
// dashboard does not answer, each attempt under the per-call timeout and admitted by the
// breaker. Statuses in ok are returned to the caller with their body; any other status,
// and every transport failure, becomes an error through classify. The success body is read
// in full, up to r.limit bytes; a longer body is an error wrapping domain.ErrUnavailable.
//
// The caller's cancellation always wins: it ends a wait between attempts at once and is
// what do reports. A retry the breaker refuses ends the loop with the last real error.
func (c *Client) do(ctx context.Context, r request, ok ...int) (resp response, err error) {
	start := time.Now()
	defer func() { observe(ctx, r, start, err) }()
	var last error
	for n := 0; ; n++ {
		probe, err := c.breaker.allow(r.op)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return response{}, contextError(ctx, r.op)
			case last != nil:
				return response{}, last // a retry refused: say what Ray did, not what we did
			}
			return response{}, err
		}
		a := c.once(ctx, r, ok)
		c.breaker.record(probe, a.outcome)
		if a.outcome == down {
			c.epoch.Add(1)
		}
		if a.err == nil || !r.idempotent {
			return a.resp, a.err
		}
		wait, again := c.retryWait(ctx, n, a)
		if !again {
			return response{}, a.err
		}
		if !sleep(ctx, wait) {
			return response{}, contextError(ctx, r.op)
		}
		last = a.err
	}
}

// once performs one attempt of r under the per-call timeout and says what it proved about
// the dashboard.
func (c *Client) once(parent context.Context, r request, ok []int) attempt {
	ctx, cancel := context.WithTimeoutCause(parent, c.timeout, c.timeoutCause)
	defer cancel()

	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, c.base+r.path, body)
	if err != nil {
		// Only reachable with a path we built wrongly; the base was validated in New.
		return attempt{err: fmt.Errorf("ray: %s: building request: %v: %w", r.op, err, domain.ErrInvalid)}
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "ray-executor")
	if r.contentType != "" {
		req.Header.Set("Content-Type", r.contentType)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}

	resp, err := c.hc.Do(req)
	if err != nil {
		return c.failed(parent, ctx, r.op, err)
	}
	defer resp.Body.Close()

	wanted := false
	for _, s := range ok {
		if resp.StatusCode == s {
			wanted = true
			break
		}
	}
	limit := int64(maxErrorBody)
	if wanted {
		limit = r.limit
		if limit == 0 {
			limit = maxBody
		}
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return c.failed(parent, ctx, r.op, err)
	}
	if !wanted {
		if int64(len(data)) > limit {
			data = data[:limit]
		}
		a := attempt{err: classify(ctx, r.op, resp.StatusCode, data, nil)}
		switch resp.StatusCode {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			a.outcome = down
			a.retryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
		case http.StatusTooManyRequests:
			a.outcome = busy
			a.retryAfter = retryAfter(resp.Header.Get("Retry-After"), time.Now())
		}
		return a
	}
	if int64(len(data)) > limit {
		return attempt{err: fmt.Errorf("ray: %s: response body exceeds %d bytes: %w", r.op, limit, domain.ErrUnavailable)}
	}
	return attempt{resp: response{status: resp.StatusCode, body: data}}
}

// failed describes an attempt that got no usable response: the caller's context ending
// says nothing about Ray; anything else, our per-call timeout included, is Ray not
// answering.
func (c *Client) failed(parent, ctx context.Context, op string, err error) attempt {
	a := attempt{err: classify(ctx, op, 0, nil, err), outcome: down}
	switch {
	case parent.Err() != nil:
		a.outcome = callerEnded
	case ctx.Err() != nil:
		a.timedOut = true
	}
	return a
}

// doJSON performs r expecting 200 and decodes the body into out. A 200 whose body is not
// the expected JSON is reported as an error wrapping domain.ErrUnavailable: the dashboard
// (or a proxy in front of it) answered something we cannot use, which is most often a
// transient misconfiguration or an error page rather than a problem with the request.
func (c *Client) doJSON(ctx context.Context, r request, out any) error {
	resp, err := c.do(ctx, r, http.StatusOK)
	if err != nil {
		return err
	}
	return decode(r.op, resp.body, out)
}

func decode(op string, body []byte, out any) error {
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("ray: %s: unparsable response %q: %v: %w", op, summarize(body), err, domain.ErrUnavailable)
	}
	return nil
}

// jsonBody marshals v for a request body.
func jsonBody(op string, v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("ray: %s: encoding request: %v: %w", op, err, domain.ErrInvalid)
	}
	return b, nil
}

// segment escapes one path segment (a job id or package name) after checking it is usable.
// Empty, "." and ".." are refused with domain.ErrInvalid: they would address another route.
func segment(op, what, s string) (string, error) {
	switch s {
	case "":
		return "", fmt.Errorf("ray: %s: empty %s: %w", op, what, domain.ErrInvalid)
	case ".", "..":
		return "", fmt.Errorf("ray: %s: invalid %s %q: %w", op, what, s, domain.ErrInvalid)
	}
	return url.PathEscape(s), nil
}

// isTimeout reports whether err is a network timeout (a dial or an http.Client.Timeout).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Ready reports whether the dashboard answers (a readiness probe's question). While the
// breaker is open it answers at once, without asking Ray.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.Version(ctx)
	return err
}

// Breaker reports the circuit breaker's state (always BreakerClosed when it is off), for
// readiness checks and metrics.
func (c *Client) Breaker() BreakerState { return c.breaker.State() }

// Epoch counts the attempts the dashboard left unanswered (transport failures, 502/503/504,
// our per-call timeout), including those that opened the breaker. A Ray head that went
// away may come back without what it stored (a restart without GCS fault tolerance loses
// uploaded packages and job records), so a cache of Ray's state that saw a different Epoch
// when it was filled must check again; Packager does.
func (c *Client) Epoch() uint64 { return c.epoch.Load() }

// NewFromConfig is New with the settings every binary reads (RAY_ADDRESS, RAY_AUTH_TOKEN,
// RAY_TIMEOUT, RAY_RETRIES, RAY_RETRY_BASE, RAY_BREAKER_FAILURES, RAY_BREAKER_COOLDOWN).
// There 0 turns retries or the breaker off; in Config it means the default.
func NewFromConfig(c config.Ray) (*Client, error) {
	cfg := Config{Address: c.Address, Token: c.Token, Timeout: c.Timeout, Retries: c.Retries,
		RetryBase: c.RetryBase, BreakerFailures: c.BreakerFailures, BreakerCooldown: c.BreakerCooldown}
	if c.Retries == 0 {
		cfg.Retries = -1
	}
	if c.BreakerFailures == 0 {
		cfg.BreakerFailures = -1
	}
	return New(cfg)
}

// LogReachability asks the dashboard once and logs the answer, so an operator reading a
// function's start-up log learns at once that Ray refuses its credential (or is not
// there), instead of from a readiness probe failing later. It never blocks start-up: run
// it in a goroutine. The token itself is never logged.
func (c *Client) LogReachability(ctx context.Context, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := c.Version(ctx)
	switch {
	case err == nil:
		logger.Info("ray: the dashboard answers", "ray_address", c.base, "ray_version", v.RayVersion,
			"token", c.token != "")
	case errors.Is(err, domain.ErrUnauthenticated):
		logger.Error("ray: the dashboard refuses this function's credential; every Ray call will fail until it is fixed",
			"ray_address", c.base, "error", err.Error())
	case errors.Is(err, context.Canceled): // shutting down
	default:
		logger.Warn("ray: the dashboard does not answer yet", "ray_address", c.base, "error", err.Error())
	}
}
