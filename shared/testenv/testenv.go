// Package testenv gives tests the real dependencies they run against (a Ray head, a NATS
// server) and the fixtures several packages share (a test CA, start-up checks). A missing
// dependency fails the test with instructions; it never skips, so CI cannot pass without
// having run the real-dependency tests.
package testenv

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// DefaultRayAddress is where `make test` and `make run` start the local Ray head.
const DefaultRayAddress = "http://127.0.0.1:8265"

// RayAddress returns the dashboard address of a running Ray head (RAY_ADDRESS, or the local
// default) and fails the test when none answers.
func RayAddress(t testing.TB) string {
	t.Helper()
	addr := os.Getenv("RAY_ADDRESS")
	if addr == "" {
		addr = DefaultRayAddress
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, addr+"/api/version", nil)
	if err != nil {
		t.Fatalf("testenv: bad RAY_ADDRESS %q: %v", addr, err)
	}
	if tok := RayToken(t); tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("testenv: no Ray head answers at %s (%v); run the tests with `make test`, "+
			"which starts one, or start one with `make ray-up`", addr, err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		t.Fatalf("testenv: the Ray head at %s requires a token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE "+
			"(`make test` sets RAY_AUTH_TOKEN_FILE to the token of the head it starts)", addr)
	case http.StatusForbidden:
		t.Fatalf("testenv: the Ray head at %s refused the token of RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_FILE: it is wrong for this cluster", addr)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("testenv: Ray head at %s answered %s to /api/version", addr, resp.Status)
	}
	return addr
}

// RayToken returns the Ray head's auth token (RAY_AUTH_TOKEN, else the contents of
// RAY_AUTH_TOKEN_FILE), or "" when neither is set. `make test` starts its head with token
// authentication and sets RAY_AUTH_TOKEN_FILE.
func RayToken(t testing.TB) string {
	t.Helper()
	if tok := strings.TrimSpace(os.Getenv("RAY_AUTH_TOKEN")); tok != "" {
		return tok
	}
	path := os.Getenv("RAY_AUTH_TOKEN_FILE")
	if path == "" {
		return ""
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("testenv: RAY_AUTH_TOKEN_FILE: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// RayEnv is the environment a child process (a function binary) needs to reach the test
// Ray head: RAY_ADDRESS and, when the head wants a token, RAY_AUTH_TOKEN_FILE (the token
// itself never goes on a command line or into an environment listing).
func RayEnv(t testing.TB) []string {
	t.Helper()
	env := []string{"RAY_ADDRESS=" + RayAddress(t)}
	if f := os.Getenv("RAY_AUTH_TOKEN_FILE"); f != "" {
		env = append(env, "RAY_AUTH_TOKEN_FILE="+f)
	} else if tok := os.Getenv("RAY_AUTH_TOKEN"); tok != "" {
		env = append(env, "RAY_AUTH_TOKEN="+tok)
	}
	return env
}
