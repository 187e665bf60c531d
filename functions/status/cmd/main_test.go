package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// A bad internal credential or in-flight limit stops the function before it serves, and
// the error never repeats the token.
func TestInternalAccessConfigFailsAtStart(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"INTERNAL_TOKEN": "too-short"}, "INTERNAL_TOKEN is 9 characters"},
		{map[string]string{"INTERNAL_AUTH_REQUIRED": "true"}, "INTERNAL_AUTH_REQUIRED"},
		{map[string]string{"MAX_INFLIGHT": "-1"}, "MAX_INFLIGHT"},
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
