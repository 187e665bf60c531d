package domain

import (
	"fmt"
	"net/url"
	"strings"
)

// EndpointPolicy says which LLM endpoints a request may name. Without one, a caller could
// aim the workers at any host the Ray cluster reaches (the original's SSRF).
type EndpointPolicy struct {
	// Any accepts every http(s) endpoint; an operator must ask for it explicitly ("*").
	Any bool
	// Allowed entries are URL prefixes: scheme and host must match, the port too when the
	// entry names one, and the raw path must start with the entry's path on a segment
	// boundary, with no dot segments, encoded slashes, backslashes or ";" parameters.
	Allowed []*url.URL
}

// ParseEndpointPolicy reads a comma-separated allowlist ("*" alone allows any endpoint).
// An empty list allows none.
func ParseEndpointPolicy(list string) (*EndpointPolicy, error) {
	p := &EndpointPolicy{}
	for _, e := range strings.Split(list, ",") {
		e = strings.TrimSpace(e)
		switch {
		case e == "":
		case e == "*":
			p.Any = true
		default:
			u, err := url.Parse(e)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
				return nil, fmt.Errorf("LLM endpoint allowlist entry %q is not an http(s) URL with a host", e)
			}
			p.Allowed = append(p.Allowed, u)
		}
	}
	return p, nil
}

// Allows reports whether raw (already checked to be an http(s) URL) may be called.
func (p *EndpointPolicy) Allows(raw string) bool {
	if p == nil || p.Any {
		return true
	}
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	for _, a := range p.Allowed {
		if a.Scheme != u.Scheme || !strings.EqualFold(a.Hostname(), u.Hostname()) {
			continue
		}
		if a.Port() != "" && a.Port() != portOf(u) {
			continue
		}
		prefix := strings.TrimRight(a.EscapedPath(), "/")
		if prefix == "" {
			return true
		}
		// An entry with a path is compared on the raw path, and a path a server could read
		// as another one is refused: dot segments (plain or encoded), encoded slashes and
		// backslashes, backslashes, and ";" parameters.
		path := u.EscapedPath()
		if !plainPath(path) {
			return false
		}
		if path == prefix || strings.HasPrefix(path, prefix+"/") {
			return true
		}
	}
	return false
}

func (p *EndpointPolicy) String() string {
	if p.Any {
		return "any endpoint"
	}
	if len(p.Allowed) == 0 {
		return "none (the operator sets LLM_ENDPOINT_ALLOWLIST)"
	}
	parts := make([]string, len(p.Allowed))
	for i, a := range p.Allowed {
		parts[i] = a.String()
	}
	return strings.Join(parts, ", ")
}

// plainPath reports whether a raw URL path means what it says to every server: no dot
// segments, no encoded dots, slashes or backslashes, no backslashes, no ";" parameters.
func plainPath(raw string) bool {
	lower := strings.ToLower(raw)
	for _, bad := range []string{"%2e", "%2f", "%5c", "\\", ";"} {
		if strings.Contains(lower, bad) {
			return false
		}
	}
	for _, seg := range strings.Split(raw, "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "https" {
		return "443"
	}
	return "80"
}
