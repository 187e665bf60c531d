// Package testenv gives tests the real dependencies they run against (a Ray head, a NATS
// server) and the fixtures several packages share (a test CA, start-up checks). A missing
// dependency fails the test with instructions; it never skips, so CI cannot pass without
// having run the real-dependency tests.
package testenv

import (
	"context"
	"net/http"
	"os"
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
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("testenv: no Ray head answers at %s (%v); run the tests with `make test`, "+
			"which starts one, or start one with `make ray-up`", addr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("testenv: Ray head at %s answered %s to /api/version", addr, resp.Status)
	}
	return addr
}
