// Package events is the catalogue of deliberation lifecycle events (specs/nats.md): their
// kinds, subjects, message ids and data, built as CloudEvents. It knows nothing of NATS;
// shared/natsbus carries them.
package events

import (
	"encoding/json"
	"fmt"
	"time"
)

// Kind is a lifecycle event's short name, the last token of its subject.
type Kind string

const (
	Submitted      Kind = "submitted"
	Started        Kind = "started"
	AgentCompleted Kind = "agent_completed"
	AgentFailed    Kind = "agent_failed"
	Completed      Kind = "completed"
	Failed         Kind = "failed"
	Cancelled      Kind = "cancelled"
)

// Terminal kinds end a deliberation; exactly one of them is ever stored per deliberation.
func (k Kind) Terminal() bool { return k == Completed || k == Failed || k == Cancelled }

// Kinds lists every kind, in lifecycle order.
var Kinds = []Kind{Submitted, Started, AgentCompleted, AgentFailed, Completed, Failed, Cancelled}

const (
	// SubjectPrefix starts every lifecycle subject: <prefix>.<deliberation_id>.<kind>.
	SubjectPrefix = "ray_executor.deliberation"
	// TypePrefix starts every lifecycle CloudEvent type.
	TypePrefix = "fleet.ray_executor.v1.deliberation."
)

// Sources of lifecycle events.
const (
	SourceExecute    = "ray-executor/execute"
	SourcePayload    = "ray-executor/payload"
	SourceReconciler = "ray-executor/reconciler"
	SourceStatus     = "ray-executor/status"
)

// Subject is where events of kind k about deliberation id go.
func Subject(id string, k Kind) string { return SubjectPrefix + "." + id + "." + string(k) }

// SubjectFilter matches every lifecycle event of deliberation id.
func SubjectFilter(id string) string { return SubjectPrefix + "." + id + ".>" }

// Type is the CloudEvent type of kind k.
func Type(k Kind) string { return TypePrefix + string(k) }

// MsgID is the Nats-Msg-Id (and CloudEvent id) of an event: fixed per deliberation and kind,
// per agent for agent events, and one for every terminal kind, so that retries and repairs
// are de-duplicated and no deliberation ever stores two terminal events.
func MsgID(id string, k Kind, agentIndex int) string {
	switch {
	case k.Terminal():
		return id + ".terminal"
	case k == AgentCompleted || k == AgentFailed:
		return fmt.Sprintf("%s.agent.%d", id, agentIndex)
	default:
		return id + "." + string(k)
	}
}

// Event is a lifecycle CloudEvent in structured mode.
type Event struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Subject         string          `json:"subject"`
	Time            time.Time       `json:"time"`
	DataContentType string          `json:"datacontenttype"`
	Traceparent     string          `json:"traceparent,omitempty"`
	Data            json.RawMessage `json:"data"`
}

// New builds the event of kind k about deliberation id; data is marshalled as its JSON data.
func New(source, id string, k Kind, agentIndex int, data any, traceparent string) (Event, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return Event{}, fmt.Errorf("events: data of %s: %w", k, err)
	}
	return Event{
		SpecVersion:     "1.0",
		ID:              MsgID(id, k, agentIndex),
		Source:          source,
		Type:            Type(k),
		Subject:         id,
		Time:            time.Now().UTC(),
		DataContentType: "application/json",
		Traceparent:     traceparent,
		Data:            raw,
	}, nil
}

// Kind is the event's kind, from its type.
func (e Event) Kind() Kind {
	if len(e.Type) > len(TypePrefix) {
		return Kind(e.Type[len(TypePrefix):])
	}
	return ""
}

// Data of each kind (specs/nats.md). Fields are omitted when unknown.

// SubmittedData is the data of a submitted event.
type SubmittedData struct {
	DeliberationID string `json:"deliberation_id"`
	TaskID         string `json:"task_id"`
	Kind           string `json:"kind,omitempty"`
	Role           string `json:"role,omitempty"`
	StoryID        string `json:"story_id,omitempty"`
	PlanID         string `json:"plan_id,omitempty"`
	NumAgents      int    `json:"num_agents"`
}

// StartedData is the data of a started event.
type StartedData struct {
	DeliberationID string `json:"deliberation_id"`
	TaskID         string `json:"task_id"`
	NumAgents      int    `json:"num_agents"`
}

// AgentData is the data of an agent_completed or agent_failed event.
type AgentData struct {
	DeliberationID string  `json:"deliberation_id"`
	TaskID         string  `json:"task_id"`
	AgentIndex     int     `json:"agent_index"`
	AgentID        string  `json:"agent_id"`
	Role           string  `json:"role,omitempty"`
	Model          string  `json:"model,omitempty"`
	Proposal       string  `json:"proposal,omitempty"`
	Reasoning      string  `json:"reasoning,omitempty"`
	Score          float64 `json:"score,omitempty"`
	Tokens         int64   `json:"tokens,omitempty"`
	Error          string  `json:"error,omitempty"`
	ErrorType      string  `json:"error_type,omitempty"`
	DurationMS     int64   `json:"duration_ms"`
	Attempts       int     `json:"attempts,omitempty"`
}

// TerminalData is the data of a completed, failed or cancelled event.
type TerminalData struct {
	DeliberationID  string `json:"deliberation_id"`
	TaskID          string `json:"task_id"`
	Status          string `json:"status"`
	NumAgents       int    `json:"num_agents,omitempty"`
	CompletedAgents int    `json:"completed_agents"`
	FailedAgents    int    `json:"failed_agents"`
	DurationMS      int64  `json:"duration_ms,omitempty"`
	Error           string `json:"error,omitempty"`
	ErrorType       string `json:"error_type,omitempty"`
	Reason          string `json:"reason,omitempty"`
}
