package domain

import (
	"strings"
	"testing"
)

func TestValidTraceparent(t *testing.T) {
	good := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if !ValidTraceparent(good) || CleanTraceparent(good) != good {
		t.Fatalf("%s refused", good)
	}
	for _, bad := range []string{
		"",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",       // another version
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",       // upper case
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",       // zero trace id
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",       // zero parent id
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", // trailing data
		"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",       // not hex
		"00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",       // separators
		good[:54] + "\n",           // a header injection
		strings.Repeat("a", 1<<16), // huge
	} {
		if ValidTraceparent(bad) || CleanTraceparent(bad) != "" {
			t.Errorf("%q accepted", bad)
		}
	}
}
