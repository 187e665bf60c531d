// Package ray is a small client for the Ray Jobs REST API served by the Ray dashboard
// (http(s)://<head>:8265), plus the packager that ships the Python deliberation payload to
// the cluster as a GCS working_dir package.
//
// Every error a Client returns wraps exactly one of the sentinels in shared/domain
// (ErrInvalid, ErrNotFound, ErrAlreadyExists, ErrUnavailable, ErrUnauthenticated,
// ErrDeadline) or context.Canceled, so callers branch with errors.Is. The mapping lives in
// one place, classify in errors.go.
package ray

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/domain"
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
	c := &Client{base: base, token: cfg.Token, timeout: cfg.Timeout, hc: cfg.HTTPClient}
	if c.timeout == 0 {
		c.timeout = DefaultTimeout
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
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 64
	t.MaxIdleConnsPerHost = 32
	t.IdleConnTimeout = 90 * time.Second
	t.ResponseHeaderTimeout = 0 // the per-call context deadline covers it
	t.DisableKeepAlives = false
	return &http.Client{Transport: t}
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
}

// response is what do hands back for a status the caller asked to see.
type response struct {
	status int
	body   []byte
}

// do performs r under the per-call timeout. Statuses in ok are returned to the caller with
// their body; any other status, and every transport failure, becomes an error through
// classify. The success body is read in full, up to r.limit bytes; a longer body is an
// error wrapping domain.ErrUnavailable.
func (c *Client) do(ctx context.Context, r request, ok ...int) (response, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, c.timeout, c.timeoutCause)
	defer cancel()

	var body io.Reader
	if r.body != nil {
		body = bytes.NewReader(r.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, c.base+r.path, body)
	if err != nil {
		// Only reachable with a path we built wrongly; the base was validated in New.
		return response{}, fmt.Errorf("ray: %s: building request: %v: %w", r.op, err, domain.ErrInvalid)
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
		return response{}, classify(ctx, r.op, 0, nil, err)
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
		return response{}, classify(ctx, r.op, 0, nil, err)
	}
	if !wanted {
		if int64(len(data)) > limit {
			data = data[:limit]
		}
		return response{}, classify(ctx, r.op, resp.StatusCode, data, nil)
	}
	if int64(len(data)) > limit {
		return response{}, fmt.Errorf("ray: %s: response body exceeds %d bytes: %w", r.op, limit, domain.ErrUnavailable)
	}
	return response{status: resp.StatusCode, body: data}, nil
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

// Ready reports whether the dashboard answers (a readiness probe's question).
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.Version(ctx)
	return err
}

// NewFromConfig is New with the settings every binary reads (RAY_ADDRESS, RAY_AUTH_TOKEN,
// RAY_TIMEOUT).
func NewFromConfig(c config.Ray) (*Client, error) {
	return New(Config{Address: c.Address, Token: c.Token, Timeout: c.Timeout})
}
