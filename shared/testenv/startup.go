package testenv

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
)

// InternalAccessRefusedAtStart checks a function's run (its cmd `run(ctx, getenv, stdout)`)
// against the internal-access configuration every function must refuse before it serves:
// a too-short INTERNAL_TOKEN, INTERNAL_AUTH_REQUIRED without a token, and badInflight as
// MAX_INFLIGHT. Each error must name the setting and never repeat the token.
func InternalAccessRefusedAtStart(t testing.TB, run func(context.Context, func(string) string, io.Writer) error, badInflight string) {
	t.Helper()
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"INTERNAL_TOKEN": "too-short"}, "INTERNAL_TOKEN is 9 characters"},
		{map[string]string{"INTERNAL_AUTH_REQUIRED": "true"}, "INTERNAL_AUTH_REQUIRED"},
		{map[string]string{"MAX_INFLIGHT": badInflight}, "MAX_INFLIGHT"},
	}
	// Cancelled: a regression that let the function start must not leave it serving.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tt := range tests {
		err := run(ctx, func(k string) string { return tt.env[k] }, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("env %v: got %v, want an error naming %q", tt.env, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "too-short") {
			t.Errorf("error %q: got the token in it, want it kept out", err)
		}
	}
}
