package domain

import (
	"testing"
)

func TestJobMetaRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		meta JobMeta
	}{
		{"full", JobMeta{
			DeliberationID: "delib-abc",
			Kind:           KindBacklogReview,
			TaskID:         "ceremony-c:story-s:role-r",
			Role:           "qa",
			StoryID:        "s",
			PlanID:         "",
			NumAgents:      3,
			TaskType:       "backlog_review",
			RequestHash:    "0123abcd",
			Traceparent:    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		}},
		{"deliberation without optional fields", JobMeta{
			DeliberationID: "delib-x",
			Kind:           KindDeliberation,
			TaskID:         "t",
			Role:           "dev",
			StoryID:        "s",
			PlanID:         "p",
			NumAgents:      1,
			RequestHash:    "h",
		}},
		{"zero", JobMeta{}},
		{"many agents", JobMeta{DeliberationID: "d", NumAgents: 10000}},
		{"odd strings", JobMeta{TaskID: "a=b,c;d \n\"e\"", Role: "ünï"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			md := tt.meta.Map()
			if got := md[MetaMarker]; got != MetaMarkerValue {
				t.Errorf("Map()[%q]: got %q, want %q", MetaMarker, got, MetaMarkerValue)
			}
			if _, ok := md[MetaTaskType]; ok != (tt.meta.TaskType != "") {
				t.Errorf("Map() has %q: got %v, want %v (only when set)", MetaTaskType, ok, tt.meta.TaskType != "")
			}
			if _, ok := md[MetaTraceparent]; ok != (tt.meta.Traceparent != "") {
				t.Errorf("Map() has %q: got %v, want %v (only when set)", MetaTraceparent, ok, tt.meta.Traceparent != "")
			}
			got, ok := ParseJobMeta(md)
			if !ok {
				t.Fatalf("ParseJobMeta(Map()): got ok false, want true")
			}
			if got != tt.meta {
				t.Errorf("ParseJobMeta(Map()): got %+v, want %+v", got, tt.meta)
			}
		})
	}
}

func TestJobMetaMapKeys(t *testing.T) {
	m := JobMeta{DeliberationID: "d", Kind: KindDeliberation, TaskID: "t", Role: "r", StoryID: "s",
		PlanID: "p", NumAgents: 7, TaskType: "tt", RequestHash: "h", Traceparent: "tp"}
	want := map[string]string{
		"ray_executor":    "v1",
		"deliberation_id": "d",
		"kind":            "deliberation",
		"task_id":         "t",
		"role":            "r",
		"story_id":        "s",
		"plan_id":         "p",
		"num_agents":      "7",
		"task_type":       "tt",
		"request_sha256":  "h",
		"traceparent":     "tp",
	}
	got := m.Map()
	if len(got) != len(want) {
		t.Errorf("Map(): got %d keys %v, want %d %v", len(got), got, len(want), want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("Map()[%q]: got %q, want %q", k, got[k], v)
		}
	}
}

func TestParseJobMetaForeign(t *testing.T) {
	tests := []struct {
		name string
		md   map[string]string
	}{
		{"nil", nil},
		{"empty", map[string]string{}},
		{"marker missing", map[string]string{MetaDeliberationID: "delib-x", MetaTaskID: "t"}},
		{"marker empty", map[string]string{MetaMarker: "", MetaDeliberationID: "delib-x"}},
		{"other version", map[string]string{MetaMarker: "v2", MetaDeliberationID: "delib-x"}},
		{"marker case differs", map[string]string{MetaMarker: "V1"}},
		{"someone else's job", map[string]string{"job_name": "training", "owner": "ml-team"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ParseJobMeta(tt.md)
			if ok {
				t.Errorf("ParseJobMeta(%v): got ok true, want false", tt.md)
			}
			if got != (JobMeta{}) {
				t.Errorf("ParseJobMeta(%v): got %+v, want the zero JobMeta", tt.md, got)
			}
		})
	}
}

func TestParseJobMetaBadNumAgents(t *testing.T) {
	for _, n := range []string{"", "many", "1.5", "-"} {
		t.Run(n, func(t *testing.T) {
			got, ok := ParseJobMeta(map[string]string{MetaMarker: MetaMarkerValue, MetaNumAgents: n, MetaTaskID: "t"})
			if !ok {
				t.Fatalf("ParseJobMeta: got ok false, want true (the marker is there)")
			}
			if got.NumAgents != 0 || got.TaskID != "t" {
				t.Errorf("ParseJobMeta: got NumAgents %d TaskID %q, want 0 and %q", got.NumAgents, got.TaskID, "t")
			}
		})
	}
}
