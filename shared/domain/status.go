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

// A deliberation this system accepted whose Ray job record is gone (a head restarted
// without GCS fault tolerance, or job history deleted) ends failed with this error type and
// message, in status replies and in its terminal event.
const (
	ErrorTypeLost = "lost_by_cluster"
	LostMessage   = "lost by the cluster: Ray has no record of this accepted deliberation " +
		"(its head restarted without GCS fault tolerance, or its job history was deleted); " +
		"submit it again with a new idempotency key"
)
