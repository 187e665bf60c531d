package domain

// Status is a deliberation's state as callers see it. The first four are the original's
// strings (COMPAT.md); pending and cancelled are additions.
type Status string

const (
	StatusPending   Status = "pending"
	StatusRunning   Status = "running"
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
	StatusCancelled Status = "cancelled"
	StatusNotFound  Status = "not_found"
)

// Terminal reports whether the status can never change again.
func (s Status) Terminal() bool {
	return s == StatusCompleted || s == StatusFailed || s == StatusCancelled
}

// Active reports whether the deliberation is waiting for or using the cluster.
func (s Status) Active() bool { return s == StatusPending || s == StatusRunning }
