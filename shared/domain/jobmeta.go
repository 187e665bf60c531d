package domain

// MetaMarker is the Ray job metadata key that marks the jobs this system submits (the
// executor job, whose value is executor.MetadataMarker). Ray accepts only string values.
const MetaMarker = "ray_executor"

// JobMeta is what lifecycle events carry about a deliberation (Record.Meta).
type JobMeta struct {
	DeliberationID string
	Kind           Kind
	TaskID         string
	Role           string
	StoryID        string
	PlanID         string
	NumAgents      int
	TaskType       string
	// RequestHash identifies the request's content, so a reused idempotency key with a
	// different request is told apart from a retry.
	RequestHash string
	Traceparent string
}
