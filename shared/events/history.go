package events

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// History is what a deliberation's stored events say about it: the answer when Ray no
// longer has its job record.
type History struct {
	// Meta is recovered from the submitted event; Submitted is false without one.
	Meta      domain.JobMeta
	Submitted bool
	// Terminal is the data of the terminal event, nil while there is none.
	Terminal *TerminalData
	// Agents are the agent events' results, by agent index.
	Agents               []domain.AgentResult
	SubmittedAt, EndedAt time.Time
}

// maxAgentIndex bounds the agent indexes read back: far above any MAX_AGENTS, low enough
// that a corrupt index cannot make Summarize allocate much.
const maxAgentIndex = 1 << 12

// Summarize reads stored events (in any order) into a History. Events whose data does
// not decode are skipped: one bad event must not hide the rest.
func Summarize(stored []Stored) History {
	var h History
	agents := map[int]domain.AgentResult{}
	maxIndex := -1
	for _, st := range stored {
		switch k := st.Kind(); {
		case k == Submitted:
			var d SubmittedData
			if json.Unmarshal(st.Data, &d) != nil {
				continue
			}
			h.Submitted, h.SubmittedAt = true, st.Time
			h.Meta = domain.JobMeta{DeliberationID: d.DeliberationID, Kind: domain.Kind(d.Kind), TaskID: d.TaskID,
				Role: d.Role, StoryID: d.StoryID, PlanID: d.PlanID, NumAgents: d.NumAgents, Traceparent: st.Traceparent}
		case k == AgentCompleted || k == AgentFailed:
			var d AgentData
			if json.Unmarshal(st.Data, &d) != nil || d.AgentIndex < 0 || d.AgentIndex >= maxAgentIndex {
				continue
			}
			status := domain.StatusFailed
			if k == AgentCompleted {
				status = domain.StatusCompleted
			}
			agents[d.AgentIndex] = domain.AgentResult{AgentID: d.AgentID, Role: d.Role, Model: d.Model,
				Status: string(status), Proposal: d.Proposal, Reasoning: d.Reasoning, Score: d.Score,
				Tokens: d.Tokens, DurationMS: d.DurationMS, Attempts: d.Attempts, Error: d.Error, ErrorType: d.ErrorType}
			maxIndex = max(maxIndex, d.AgentIndex)
		case k.Terminal():
			var d TerminalData
			if json.Unmarshal(st.Data, &d) != nil {
				continue
			}
			if k == Cancelled && d.Error == "" {
				d.Error = d.Reason
			}
			h.Terminal, h.EndedAt = &d, st.Time
		}
	}
	for i := 0; i <= maxIndex; i++ {
		if a, ok := agents[i]; ok {
			h.Agents = append(h.Agents, a)
		}
	}
	return h
}

// Outcome rebuilds the deliberation's outcome from a terminal event and agent events, or
// returns nil when there is no terminal event or no agent ever reported.
func (h History) Outcome() *domain.Outcome {
	if h.Terminal == nil || len(h.Agents) == 0 {
		return nil
	}
	t := h.Terminal
	return &domain.Outcome{Version: 1, DeliberationID: t.DeliberationID, TaskID: t.TaskID, Status: t.Status,
		NumAgents: max(t.NumAgents, len(h.Agents)), CompletedAgents: t.CompletedAgents, FailedAgents: t.FailedAgents,
		DurationMS: t.DurationMS, Error: t.Error, Agents: h.Agents}
}

// LostEvent is the failed terminal event of an accepted deliberation that Ray has no
// record of (domain.ErrorTypeLost).
func LostEvent(source string, m domain.JobMeta) (Event, error) {
	if m.DeliberationID == "" {
		return Event{}, fmt.Errorf("events: lost event without a deliberation id: %w", domain.ErrInvalid)
	}
	return TerminalEvent(source, m, domain.StatusFailed, nil, domain.LostMessage, domain.ErrorTypeLost)
}
