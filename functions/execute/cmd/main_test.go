package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/testenv"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestRayClientAddressFailsAtStart(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), env(map[string]string{"RAY_ADDRESS": "ray://ray-head:10001"}), &out)
	if err == nil || !strings.Contains(err.Error(), "8265") || !strings.Contains(err.Error(), "Python") {
		t.Fatalf("got %v, want an error explaining Ray Client is Python-only and to use the dashboard :8265", err)
	}
}

func TestBadConfigurationFailsAtStart(t *testing.T) {
	err := run(context.Background(), env(map[string]string{"PORT": "http", "EXECUTOR_MAX_REPLICAS": "zero", "RAY_TIMEOUT": "soon"}), &bytes.Buffer{})
	for _, want := range []string{"PORT", "EXECUTOR_MAX_REPLICAS", "RAY_TIMEOUT"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want it to name %s", err, want)
		}
	}
}

// execute serves once NATS answers (its readiness: accepting is a NATS write; Ray is off
// the request path, so this needs no Ray head) and returns nil when its context ends.
func TestRunServesUntilCancelled(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	natsURL := testenv.NATS(t).Config().URL
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		done <- run(ctx, env(map[string]string{"PORT": fmt.Sprint(port), "HOST": "127.0.0.1",
			"NATS_URL": natsURL, "EXECUTOR_DEPLOY": "false", "K_SERVICE": "execute", "K_REVISION": "execute-00001"}), &out)
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
		t.Fatal("execute never became ready with NATS up")
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

// A bad internal credential or in-flight limit stops the function before it serves, and
// the error never repeats the token.
func TestInternalAccessConfigFailsAtStart(t *testing.T) {
	testenv.InternalAccessRefusedAtStart(t, run, "0")
}
