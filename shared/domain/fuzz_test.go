package domain

import (
	"errors"
	"strings"
	"testing"
)

// FuzzNormalize validates requests built from arbitrary text: it accepts or refuses with a
// *ValidationError wrapping ErrInvalid, never panics, and what it accepts is within limits.
func FuzzNormalize(f *testing.F) {
	f.Add("t1", "describe", "dev", "s1", "http://127.0.0.1:8000", "m", "a1", "dev", "m", "", int32(0), int32(0), false)
	f.Add("ceremony-c:story-s:role-r", "x", "r", "s", "https://h/v1", "m", "a", "r", "m", "{role}", int32(5), int32(2), true)
	f.Add("", "", "", "", "file:///etc/passwd", "", "", "", "", "", int32(-1), int32(-1), false)
	f.Add("t", "$(touch /tmp/x)", "r", "s", "http://:80", "m", "a", "r", "m", "\xff", int32(4000), int32(99), true)
	f.Fuzz(func(t *testing.T, taskID, desc, role, story, url, model, agentID, agentRole, agentModel, tmpl string,
		timeout, retries int32, backlog bool) {
		r := Request{Kind: KindDeliberation, TaskID: taskID, TaskDescription: desc, Role: role,
			Constraints: Constraints{StoryID: story, TimeoutSeconds: timeout, MaxRetries: retries},
			Agents:      []Agent{{ID: agentID, Role: agentRole, Model: agentModel, PromptTemplate: tmpl}},
			VLLMURL:     url, VLLMModel: model}
		if backlog {
			r.Kind = KindBacklogReview
		}
		err := Normalize(&r, Limits{})
		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || !errors.Is(err, ErrInvalid) || len(ve.Problems) == 0 {
				t.Fatalf("got %v, want a *ValidationError wrapping ErrInvalid", err)
			}
			return
		}
		l := DefaultLimits()
		if r.Constraints.TimeoutSeconds <= 0 || r.Constraints.TimeoutSeconds > l.MaxTimeoutSeconds ||
			r.Constraints.MaxRetries <= 0 || r.Constraints.MaxRetries > l.MaxRetries ||
			strings.TrimSpace(r.TaskDescription) == "" || len(r.TaskDescription) > l.MaxDescriptionBytes {
			t.Fatalf("accepted a request outside the rules: %+v", r)
		}
	})
}
