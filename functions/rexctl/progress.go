package rexctl

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
)

// maxDisplayAgents bounds the agents one deliberation's progress keeps (execute's default
// limit is 32).
const maxDisplayAgents = 1024

// Agent states shown by watch.
const (
	agentPending = "pending"
	agentRunning = "running"
	agentDone    = "done"
	agentFailed  = "failed"
)

// eventData is a lifecycle event's data (specs/nats.md "Lifecycle events").
type eventData struct {
	TaskID          string  `json:"task_id"`
	NumAgents       int     `json:"num_agents"`
	AgentIndex      *int    `json:"agent_index"`
	AgentID         string  `json:"agent_id"`
	Role            string  `json:"role"`
	Model           string  `json:"model"`
	Score           float64 `json:"score"`
	Tokens          int64   `json:"tokens"`
	DurationMS      int64   `json:"duration_ms"`
	Attempts        int     `json:"attempts"`
	Error           string  `json:"error"`
	ErrorType       string  `json:"error_type"`
	CompletedAgents int     `json:"completed_agents"`
	FailedAgents    int     `json:"failed_agents"`
	Reason          string  `json:"reason"`
}

type agentState struct {
	id, role, model string
	state           string
	score           float64
	durationMS      int64
	errText         string
}

// progress is what a watch knows of one deliberation, built from its lifecycle events.
type progress struct {
	id, taskID string
	agents     []agentState
	started    bool
	submitted  time.Time // the first event's time
	ended      time.Time
	outcome    string // the terminal kind, once seen
	detail     string // the terminal event's error or reason
	durationMS int64
}

// newProgress starts a deliberation's progress; known are its agents when this process
// submitted it (else they are learnt from events).
func newProgress(id string, known []*pb.Agent) *progress {
	p := &progress{id: id}
	for i, a := range known {
		if i == maxDisplayAgents {
			break
		}
		p.agents = append(p.agents, agentState{id: a.GetId(), role: a.GetRole(), model: a.GetModel(), state: agentPending})
	}
	return p
}

// apply takes one event in, and returns its data.
func (p *progress) apply(ev *pb.LifecycleEvent) eventData {
	var d eventData
	_ = json.Unmarshal([]byte(ev.GetDataJson()), &d) // absent or odd fields stay zero
	if p.taskID == "" {
		p.taskID = d.TaskID
	}
	at := ev.GetTime().AsTime()
	if ev.GetTime() != nil && p.submitted.IsZero() {
		p.submitted = at
	}
	if d.NumAgents > 0 {
		p.grow(d.NumAgents)
	}
	switch ev.GetKind() {
	case "started":
		p.started = true
		for i := range p.agents {
			if p.agents[i].state == agentPending {
				p.agents[i].state = agentRunning
			}
		}
	case "agent_completed", "agent_failed":
		if d.AgentIndex == nil || *d.AgentIndex < 0 || *d.AgentIndex >= maxDisplayAgents {
			break
		}
		p.grow(*d.AgentIndex + 1)
		a := &p.agents[*d.AgentIndex]
		a.id, a.durationMS = orKeep(d.AgentID, a.id), d.DurationMS
		a.role, a.model = orKeep(d.Role, a.role), orKeep(d.Model, a.model)
		if ev.GetKind() == "agent_completed" {
			a.state, a.score = agentDone, d.Score
		} else {
			a.state, a.errText = agentFailed, joinNonEmpty(": ", d.ErrorType, d.Error)
		}
	case "completed", "failed", "cancelled":
		p.outcome, p.durationMS = ev.GetKind(), d.DurationMS
		p.detail = joinNonEmpty(": ", d.ErrorType, d.Error, d.Reason)
		if ev.GetTime() != nil {
			p.ended = at
		}
		if ev.GetKind() == "cancelled" {
			for i := range p.agents {
				if p.agents[i].state == agentRunning || p.agents[i].state == agentPending {
					p.agents[i].state = "cancelled"
				}
			}
		}
	}
	return d
}

// grow makes room for n agents (bounded), new ones pending or running.
func (p *progress) grow(n int) {
	n = min(n, maxDisplayAgents)
	for len(p.agents) < n {
		st := agentPending
		if p.started {
			st = agentRunning
		}
		p.agents = append(p.agents, agentState{state: st})
	}
}

// counts are the agents in each state.
func (p *progress) counts() (pending, running, done, failed int) {
	for _, a := range p.agents {
		switch a.state {
		case agentPending:
			pending++
		case agentRunning:
			running++
		case agentDone:
			done++
		case agentFailed:
			failed++
		}
	}
	return
}

// elapsed is the time since the deliberation was submitted: until now, or until it ended.
func (p *progress) elapsed(now time.Time) time.Duration {
	if p.submitted.IsZero() {
		return 0
	}
	end := now
	if !p.ended.IsZero() {
		end = p.ended
	}
	if d := end.Sub(p.submitted); d > 0 {
		return d
	}
	return 0
}

// state is the deliberation's state as watch shows it.
func (p *progress) state() string {
	switch {
	case p.outcome != "":
		return p.outcome
	case p.started:
		return "running"
	default:
		return "pending"
	}
}

// result is the watch's outcome: nil when completed.
func (p *progress) result() error {
	switch p.outcome {
	case "completed":
		return nil
	case "failed", "cancelled":
		return &endedError{id: p.id, status: p.outcome, detail: clean(p.detail, 200)}
	}
	return nil
}

// eventTimeFormat is RFC 3339 in UTC with milliseconds, a fixed width.
const eventTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// plainLine is one event as a line of text (watch when stdout is not a terminal).
func plainLine(ev *pb.LifecycleEvent, d eventData) string {
	var b strings.Builder
	if ev.GetTime() != nil {
		b.WriteString(ev.GetTime().AsTime().UTC().Format(eventTimeFormat))
		b.WriteByte(' ')
	}
	kind := clean(ev.GetKind(), 32)
	b.WriteString(kind)
	b.WriteByte(' ')
	b.WriteString(clean(ev.GetSubject(), 128))
	field := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%s", k, quoteIfNeeded(clean(v, 200)))
		}
	}
	switch kind {
	case "submitted", "started":
		field("task", d.TaskID)
		if d.NumAgents > 0 {
			field("agents", fmt.Sprint(d.NumAgents))
		}
	case "agent_completed", "agent_failed":
		if d.AgentIndex != nil {
			field("index", fmt.Sprint(*d.AgentIndex))
		}
		field("agent", d.AgentID)
		field("model", d.Model)
		if kind == "agent_completed" {
			field("score", fmt.Sprintf("%.2f", d.Score))
			field("tokens", fmt.Sprint(d.Tokens))
		}
		field("duration", ms(d.DurationMS))
		field("error_type", d.ErrorType)
		field("error", d.Error)
	default:
		if d.CompletedAgents+d.FailedAgents > 0 {
			field("completed_agents", fmt.Sprint(d.CompletedAgents))
			field("failed_agents", fmt.Sprint(d.FailedAgents))
		}
		if d.DurationMS > 0 {
			field("duration", ms(d.DurationMS))
		}
		field("error_type", d.ErrorType)
		field("error", d.Error)
		field("reason", d.Reason)
	}
	return b.String()
}

// ms renders milliseconds as a duration ("3.2s"), empty for 0.
func ms(v int64) string {
	if v <= 0 {
		return ""
	}
	d := time.Duration(v) * time.Millisecond
	if d < time.Second {
		return d.String()
	}
	return d.Round(100 * time.Millisecond).String()
}

func orKeep(v, old string) string {
	if v != "" {
		return v
	}
	return old
}

func joinNonEmpty(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}

// clean makes text from the gateway (an agent's answer, an error) safe for a terminal: every
// control character becomes a space (no escape sequence reaches the screen), and it is cut
// to at most n runes.
func clean(s string, n int) string {
	return cleanText(s, n, false)
}

// cleanText is clean, keeping newlines and tabs when multiline.
func cleanText(s string, n int, multiline bool) string {
	var b strings.Builder
	count := 0
	for _, r := range strings.ToValidUTF8(s, "?") {
		if count == n {
			b.WriteString("…")
			break
		}
		switch {
		case multiline && (r == '\n' || r == '\t'):
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u2028' || r == '\u2029' || (r >= '\u202a' && r <= '\u202e') || (r >= '\u2066' && r <= '\u2069'):
			r = ' '
		}
		b.WriteRune(r)
		count++
	}
	return b.String()
}

func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsAny(s, " \"=") {
		return fmt.Sprintf("%q", s)
	}
	return s
}
