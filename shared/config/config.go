// Package config reads a binary's configuration from its environment once, in cmd/, and
// reports every bad value at once before anything starts.
package config

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Reader reads typed values from an environment lookup and collects the errors.
type Reader struct {
	getenv func(string) string
	errs   []error
}

// NewReader reads from getenv (os.Getenv in main, a map in tests).
func NewReader(getenv func(string) string) *Reader { return &Reader{getenv: getenv} }

// String returns the variable, or def when it is unset or empty.
func (r *Reader) String(name, def string) string {
	if v := strings.TrimSpace(r.getenv(name)); v != "" {
		return v
	}
	return def
}

// Int returns the variable as an integer, or def.
func (r *Reader) Int(name string, def int) int {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s=%q is not an integer", name, v))
		return def
	}
	return n
}

// Float returns the variable as a number, or def.
func (r *Reader) Float(name string, def float64) float64 {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s=%q is not a number", name, v))
		return def
	}
	return f
}

// Bool returns the variable as a boolean (true/false/1/0), or def.
func (r *Reader) Bool(name string, def bool) bool {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s=%q is not true or false", name, v))
		return def
	}
	return b
}

// Duration returns the variable as a Go duration ("30s"), or def.
func (r *Reader) Duration(name string, def time.Duration) time.Duration {
	v := r.String(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		r.errs = append(r.errs, fmt.Errorf("%s=%q is not a duration such as 30s", name, v))
		return def
	}
	return d
}

// Secret returns NAME, or the trimmed contents of the file named by NAME_FILE (how
// Kubernetes Secrets are best mounted). Secrets are never logged.
func (r *Reader) Secret(name string) string {
	if v := r.getenv(name); v != "" {
		return v
	}
	path := r.String(name+"_FILE", "")
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s_FILE: %v", name, err))
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Fail records a problem found while checking values.
func (r *Reader) Fail(format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf(format, args...))
}

// Err reports every problem found, or nil.
func (r *Reader) Err() error {
	if len(r.errs) == 0 {
		return nil
	}
	return fmt.Errorf("configuration: %w", errors.Join(r.errs...))
}

// Ray is how a binary reaches the Ray dashboard.
type Ray struct {
	Address string        // RAY_ADDRESS, http(s)://host:8265
	Token   string        // RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE
	Timeout time.Duration // RAY_TIMEOUT, per dashboard call
	// Retries is RAY_RETRIES: extra attempts an idempotent call gets when the dashboard does
	// not answer (0 turns retries off). RetryBase (RAY_RETRY_BASE) is the first backoff.
	Retries   int
	RetryBase time.Duration
	// BreakerFailures is RAY_BREAKER_FAILURES: consecutive unanswered calls that open the
	// circuit breaker (0 turns it off); it then stays open for BreakerCooldown
	// (RAY_BREAKER_COOLDOWN) before one call probes the dashboard again.
	BreakerFailures int
	BreakerCooldown time.Duration
}

// ReadRay reads the Ray settings every function shares.
func ReadRay(r *Reader) Ray {
	c := Ray{
		Address:         r.String("RAY_ADDRESS", "http://127.0.0.1:8265"),
		Token:           r.Secret("RAY_AUTH_TOKEN"),
		Timeout:         r.Duration("RAY_TIMEOUT", 10*time.Second),
		Retries:         r.Int("RAY_RETRIES", 2),
		RetryBase:       r.Duration("RAY_RETRY_BASE", 100*time.Millisecond),
		BreakerFailures: r.Int("RAY_BREAKER_FAILURES", 5),
		BreakerCooldown: r.Duration("RAY_BREAKER_COOLDOWN", 5*time.Second),
	}
	// Bounded on purpose: every retry holds a caller, and a dozen is already a sign of a
	// misreading (the value counts extra attempts, not seconds).
	if c.Retries < 0 || c.Retries > 10 {
		r.Fail("RAY_RETRIES=%d must be between 0 and 10", c.Retries)
	}
	if c.RetryBase <= 0 {
		r.Fail("RAY_RETRY_BASE=%s must be more than 0", c.RetryBase)
	}
	if c.BreakerFailures < 0 {
		r.Fail("RAY_BREAKER_FAILURES=%d must be 0 (off) or more", c.BreakerFailures)
	}
	if c.BreakerCooldown <= 0 {
		r.Fail("RAY_BREAKER_COOLDOWN=%s must be more than 0", c.BreakerCooldown)
	}
	return c
}

// Serving is what every binary reads about how it serves.
type Serving struct {
	Port         int           // PORT (Knative sets it)
	Host         string        // HOST to bind; all interfaces when empty (Knative), 127.0.0.1 for `make run`
	DrainTimeout time.Duration // DRAIN_TIMEOUT: how long SIGTERM waits for in-flight requests
	Service      string        // K_SERVICE, for logs
	Revision     string        // K_REVISION, for logs
	LogLevel     string        // LOG_LEVEL: debug, info, warn, error
}

// ReadServing reads the serving settings with the given default port.
func ReadServing(r *Reader, defaultPort int) Serving {
	s := Serving{
		Port:         r.Int("PORT", defaultPort),
		Host:         r.String("HOST", ""),
		DrainTimeout: r.Duration("DRAIN_TIMEOUT", 30*time.Second),
		Service:      r.String("K_SERVICE", ""),
		Revision:     r.String("K_REVISION", ""),
		LogLevel:     r.String("LOG_LEVEL", "info"),
	}
	if s.Port < 0 || s.Port > 65535 {
		r.Fail("PORT=%d is not a port", s.Port)
	}
	return s
}
