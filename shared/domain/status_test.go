package domain

import "testing"

func TestStatus(t *testing.T) {
	tests := []struct {
		status   Status
		str      string
		terminal bool
		active   bool
	}{
		{StatusPending, "pending", false, true},
		{StatusRunning, "running", false, true},
		{StatusCompleted, "completed", true, false},
		{StatusFailed, "failed", true, false},
		{StatusCancelled, "cancelled", true, false},
		{StatusNotFound, "not_found", false, false},
		{Status(""), "", false, false},
		{Status("RUNNING"), "RUNNING", false, false},
		{Status("succeeded"), "succeeded", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.str, func(t *testing.T) {
			if string(tt.status) != tt.str {
				t.Errorf("string(status): got %q, want %q", string(tt.status), tt.str)
			}
			if got := tt.status.Terminal(); got != tt.terminal {
				t.Errorf("%q.Terminal(): got %v, want %v", tt.status, got, tt.terminal)
			}
			if got := tt.status.Active(); got != tt.active {
				t.Errorf("%q.Active(): got %v, want %v", tt.status, got, tt.active)
			}
			if tt.status.Terminal() && tt.status.Active() {
				t.Errorf("%q: got both Terminal and Active, want at most one", tt.status)
			}
		})
	}
}
