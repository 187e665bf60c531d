package main

import (
	"testing"

	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// A bad internal credential or in-flight limit stops the function before it serves, and
// the error never repeats the token.
func TestInternalAccessConfigFailsAtStart(t *testing.T) {
	testenv.InternalAccessRefusedAtStart(t, run, "-1")
}
