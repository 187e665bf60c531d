package domain

import (
	"testing"
)

func completed(id string, score float64) AgentResult {
	return AgentResult{AgentID: id, Status: "completed", Score: score, Proposal: "proposal of " + id}
}

func failed(id string, score float64) AgentResult {
	return AgentResult{AgentID: id, Status: "failed", Score: score, Error: "boom", ErrorType: "llm_error"}
}

func TestOutcomeSummarize(t *testing.T) {
	tests := []struct {
		name     string
		agents   []AgentResult
		wantOK   bool
		wantBest string            // AgentID
		wantMeta map[string]string // nil: no aggregate metadata
	}{
		{"one completed agent", []AgentResult{completed("a", 0.4)}, true, "a", nil},
		{"one completed agent with zero score", []AgentResult{completed("a", 0)}, true, "a", nil},
		{"one failed agent", []AgentResult{failed("a", 0.9)}, false, "", nil},
		{"no agents", nil, false, "", nil},
		{"best score wins", []AgentResult{completed("a", 0.2), completed("b", 0.9), completed("c", 0.7)}, true, "b",
			map[string]string{"total_agents": "3", "completed_agents": "3", "failed_agents": "0", "average_score": "0.6000"}},
		{"best score last", []AgentResult{completed("a", 0.1), completed("b", 0.2), completed("c", 0.3)}, true, "c",
			map[string]string{"total_agents": "3", "completed_agents": "3", "failed_agents": "0", "average_score": "0.2000"}},
		{"tie goes to the first", []AgentResult{completed("a", 0.5), completed("b", 0.8), completed("c", 0.8)}, true, "b",
			map[string]string{"total_agents": "3", "completed_agents": "3", "failed_agents": "0", "average_score": "0.7000"}},
		{"all tie", []AgentResult{completed("a", 0), completed("b", 0)}, true, "a",
			map[string]string{"total_agents": "2", "completed_agents": "2", "failed_agents": "0", "average_score": "0.0000"}},
		{"failed agents never chosen and not averaged", []AgentResult{failed("x", 0.99), completed("a", 0.5), failed("y", 1), completed("b", 0.7)}, true, "b",
			map[string]string{"total_agents": "4", "completed_agents": "2", "failed_agents": "2", "average_score": "0.6000"}},
		{"only one of several completed", []AgentResult{failed("x", 0), completed("a", 0.25), failed("y", 0)}, true, "a",
			map[string]string{"total_agents": "3", "completed_agents": "1", "failed_agents": "2", "average_score": "0.2500"}},
		{"negative scores", []AgentResult{completed("a", -1), completed("b", -0.5)}, true, "b",
			map[string]string{"total_agents": "2", "completed_agents": "2", "failed_agents": "0", "average_score": "-0.7500"}},
		{"unknown statuses count as failed", []AgentResult{{AgentID: "r", Status: "running", Score: 1}, {AgentID: "u", Status: "COMPLETED", Score: 1}, {AgentID: "e", Score: 1}, completed("a", 0.1)}, true, "a",
			map[string]string{"total_agents": "4", "completed_agents": "1", "failed_agents": "3", "average_score": "0.1000"}},
		{"all failed", []AgentResult{failed("a", 0.5), failed("b", 0.9)}, false, "", nil},
		{"average rounded to 4 places", []AgentResult{completed("a", 1), completed("b", 0), completed("c", 0)}, true, "a",
			map[string]string{"total_agents": "3", "completed_agents": "3", "failed_agents": "0", "average_score": "0.3333"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Outcome{DeliberationID: "delib-x", Agents: tt.agents}
			s, ok := o.Summarize()
			if ok != tt.wantOK {
				t.Fatalf("Summarize() ok: got %v, want %v", ok, tt.wantOK)
			}
			if !ok {
				if s.Best != (AgentResult{}) || s.Metadata != nil {
					t.Errorf("Summarize() with ok false: got %+v, want the zero Summary", s)
				}
				return
			}
			if s.Best.AgentID != tt.wantBest {
				t.Errorf("Best.AgentID: got %q, want %q", s.Best.AgentID, tt.wantBest)
			}
			if !s.Best.Completed() {
				t.Errorf("Best.Status: got %q, want completed", s.Best.Status)
			}
			if s.Best.Proposal != "proposal of "+tt.wantBest {
				t.Errorf("Best.Proposal: got %q, want the chosen agent's whole result", s.Best.Proposal)
			}
			if tt.wantMeta == nil {
				if s.Metadata != nil {
					t.Errorf("Metadata: got %v, want nil for a single agent", s.Metadata)
				}
				return
			}
			if len(s.Metadata) != len(tt.wantMeta) {
				t.Errorf("Metadata: got %v, want %v", s.Metadata, tt.wantMeta)
			}
			for k, v := range tt.wantMeta {
				if s.Metadata[k] != v {
					t.Errorf("Metadata[%q]: got %q, want %q", k, s.Metadata[k], v)
				}
			}
		})
	}
}

func TestAgentResultCompleted(t *testing.T) {
	tests := []struct {
		status string
		want   bool
	}{
		{"completed", true},
		{"failed", false},
		{"", false},
		{"Completed", false},
		{"running", false},
	}
	for _, tt := range tests {
		if got := (AgentResult{Status: tt.status}).Completed(); got != tt.want {
			t.Errorf("AgentResult{Status: %q}.Completed(): got %v, want %v", tt.status, got, tt.want)
		}
	}
}
