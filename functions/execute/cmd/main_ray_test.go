//go:build ray

package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// With the build tag ray (make test): needs a running Ray head.
func TestRunServesUntilCancelled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		done <- run(ctx, env(map[string]string{"PORT": fmt.Sprint(port), "HOST": "127.0.0.1",
			"RAY_ADDRESS": testenv.RayAddress(t), "RAY_AUTH_TOKEN_FILE": os.Getenv("RAY_AUTH_TOKEN_FILE"), "K_SERVICE": "execute", "K_REVISION": "execute-00001"}), &out)
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
	var ready bool
	for deadline := time.Now().Add(10 * time.Second); !ready && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if resp, err := http.Get(url); err == nil {
			ready = resp.StatusCode == http.StatusOK
			resp.Body.Close()
		}
	}
	if !ready {
		t.Fatal("execute never became ready against the real Ray head")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if !strings.Contains(out.String(), `"k_revision":"execute-00001"`) {
		t.Errorf("logs lack the Knative revision: %s", out.String())
	}
}
