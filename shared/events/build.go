package events

import (
	"github.com/fleet-ai/ray-executor/shared/domain"
)

// The events the Go side publishes, built from what Ray records, so that execute and the
// reconciler publish identical events (same ids, same data) for the same deliberation.

// SubmittedEvent announces an accepted deliberation.
func SubmittedEvent(source string, m domain.JobMeta) (Event, error) {
	return New(source, m.DeliberationID, Submitted, 0, SubmittedData{
		DeliberationID: m.DeliberationID, TaskID: m.TaskID, Kind: string(m.Kind), Role: m.Role,
		StoryID: m.StoryID, PlanID: m.PlanID, NumAgents: m.NumAgents,
	}, m.Traceparent)
}

// StartedEvent announces that the driver started.
func StartedEvent(source string, m domain.JobMeta) (Event, error) {
	return New(source, m.DeliberationID, Started, 0, StartedData{
		DeliberationID: m.DeliberationID, TaskID: m.TaskID, NumAgents: m.NumAgents,
	}, m.Traceparent)
}

// AgentEvent reports one agent's outcome.
func AgentEvent(source string, m domain.JobMeta, index int, a domain.AgentResult) (Event, error) {
	kind := AgentFailed
	if a.Completed() {
		kind = AgentCompleted
	}
	return New(source, m.DeliberationID, kind, index, AgentData{
		DeliberationID: m.DeliberationID, TaskID: m.TaskID, AgentIndex: index, AgentID: a.AgentID,
		Role: a.Role, Model: a.Model, Proposal: a.Proposal, Reasoning: a.Reasoning, Score: a.Score,
		Tokens: a.Tokens, Error: a.Error, ErrorType: a.ErrorType, DurationMS: a.DurationMS, Attempts: a.Attempts,
	}, m.Traceparent)
}

// TerminalEvent ends a deliberation with status completed, failed or cancelled.
func TerminalEvent(source string, m domain.JobMeta, status domain.Status, o *domain.Outcome, errMsg, errType string) (Event, error) {
	d := TerminalData{DeliberationID: m.DeliberationID, TaskID: m.TaskID, Status: string(status),
		NumAgents: m.NumAgents, Error: errMsg, ErrorType: errType}
	if o != nil {
		d.CompletedAgents, d.FailedAgents, d.DurationMS = o.CompletedAgents, o.FailedAgents, o.DurationMS
	}
	kind := Failed
	switch status {
	case domain.StatusCompleted:
		kind = Completed
	case domain.StatusCancelled:
		kind, d.Reason, d.Error = Cancelled, errMsg, ""
	}
	return New(source, m.DeliberationID, kind, 0, d, m.Traceparent)
}
