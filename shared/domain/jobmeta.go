package domain

import (
	"strconv"
)

// Ray job metadata keys. Everything status, list and stats need is in the job record itself,
// so any replica after any restart can answer (DESIGN.md decision 2). Ray accepts only
// string values.
const (
	MetaMarker         = "ray_executor" // value MetaMarkerValue: the job is ours
	MetaMarkerValue    = "v1"
	MetaDeliberationID = "deliberation_id"
	MetaKind           = "kind"
	MetaTaskID         = "task_id"
	MetaRole           = "role"
	MetaStoryID        = "story_id"
	MetaPlanID         = "plan_id"
	MetaNumAgents      = "num_agents"
	MetaTaskType       = "task_type"
	MetaRequestHash    = "request_sha256"
	MetaTraceparent    = "traceparent"
)

// JobMeta is what a deliberation's Ray job carries about it.
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

// Map encodes m as Ray job metadata.
func (m JobMeta) Map() map[string]string {
	out := map[string]string{
		MetaMarker:         MetaMarkerValue,
		MetaDeliberationID: m.DeliberationID,
		MetaKind:           string(m.Kind),
		MetaTaskID:         m.TaskID,
		MetaRole:           m.Role,
		MetaStoryID:        m.StoryID,
		MetaPlanID:         m.PlanID,
		MetaNumAgents:      strconv.Itoa(m.NumAgents),
		MetaRequestHash:    m.RequestHash,
	}
	if m.TaskType != "" {
		out[MetaTaskType] = m.TaskType
	}
	if m.Traceparent != "" {
		out[MetaTraceparent] = m.Traceparent
	}
	return out
}

// ParseJobMeta decodes Ray job metadata; ok is false for jobs this system did not submit.
func ParseJobMeta(md map[string]string) (m JobMeta, ok bool) {
	if md[MetaMarker] != MetaMarkerValue {
		return JobMeta{}, false
	}
	n, _ := strconv.Atoi(md[MetaNumAgents])
	return JobMeta{
		DeliberationID: md[MetaDeliberationID],
		Kind:           Kind(md[MetaKind]),
		TaskID:         md[MetaTaskID],
		Role:           md[MetaRole],
		StoryID:        md[MetaStoryID],
		PlanID:         md[MetaPlanID],
		NumAgents:      n,
		TaskType:       md[MetaTaskType],
		RequestHash:    md[MetaRequestHash],
		Traceparent:    md[MetaTraceparent],
	}, true
}
