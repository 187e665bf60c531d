package domain

import (
	"math"
	"strconv"
)

// AgentResult is one agent's outcome as the payload reports it.
type AgentResult struct {
	AgentID          string  `json:"agent_id"`
	Role             string  `json:"role"`
	Model            string  `json:"model"`
	Status           string  `json:"status"` // "completed" or "failed"
	Proposal         string  `json:"proposal"`
	Reasoning        string  `json:"reasoning"`
	Score            float64 `json:"score"`
	Tokens           int64   `json:"tokens"`
	PromptTokens     int64   `json:"prompt_tokens"`
	CompletionTokens int64   `json:"completion_tokens"`
	DurationMS       int64   `json:"duration_ms"`
	Attempts         int     `json:"attempts"`
	StartedAt        string  `json:"started_at"`
	FinishedAt       string  `json:"finished_at"`
	Error            string  `json:"error"`
	ErrorType        string  `json:"error_type"`
}

// Completed reports whether the agent produced a proposal.
func (a AgentResult) Completed() bool { return a.Status == string(StatusCompleted) }

// Outcome is the payload's final report of a deliberation (its marked result line).
type Outcome struct {
	Version         int           `json:"version"`
	DeliberationID  string        `json:"deliberation_id"`
	TaskID          string        `json:"task_id"`
	Status          string        `json:"status"`
	NumAgents       int           `json:"num_agents"`
	CompletedAgents int           `json:"completed_agents"`
	FailedAgents    int           `json:"failed_agents"`
	StartedAt       string        `json:"started_at"`
	FinishedAt      string        `json:"finished_at"`
	DurationMS      int64         `json:"duration_ms"`
	Error           string        `json:"error"`
	Agents          []AgentResult `json:"agents"`
}

// Summary is the compatible single result of a deliberation (COMPAT.md): the only agent's
// result, or with several agents the best-scored completed one (the first on a tie), whose
// metadata carries total_agents, completed_agents, failed_agents and average_score (the mean
// score of the completed agents).
type Summary struct {
	Best     AgentResult
	Metadata map[string]string
}

// Summarize picks the compatible result; ok is false when no agent completed.
func (o Outcome) Summarize() (s Summary, ok bool) {
	best, bestScore := -1, 0.0
	var completed, failed int
	var scoreSum float64
	for i, a := range o.Agents {
		if !a.Completed() {
			failed++
			continue
		}
		completed++
		score := a.Score
		if math.IsNaN(score) || math.IsInf(score, 0) {
			score = 0 // a broken score never wins nor poisons the average
		}
		scoreSum += score
		if best < 0 || score > bestScore {
			best, bestScore = i, score
		}
	}
	if best < 0 {
		return Summary{}, false
	}
	s.Best = o.Agents[best]
	s.Best.Score = bestScore
	if len(o.Agents) > 1 {
		s.Metadata = map[string]string{
			"total_agents":     strconv.Itoa(len(o.Agents)),
			"completed_agents": strconv.Itoa(completed),
			"failed_agents":    strconv.Itoa(failed),
			"average_score":    strconv.FormatFloat(scoreSum/float64(completed), 'f', 4, 64),
		}
	}
	return s, true
}
