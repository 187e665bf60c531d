package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

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

// A bad internal credential or in-flight limit stops the function before it serves, and
// the error never repeats the token.
func TestInternalAccessConfigFailsAtStart(t *testing.T) {
	testenv.InternalAccessRefusedAtStart(t, run, "0")
}
