package domain

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
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

// FuzzRecord decodes arbitrary bytes as a stored record, as status, list and the executor
// read them: a record that passes Check goes through every transition without a panic,
// each either refuses with ErrTerminal (the record had ended) or gives a record that still
// passes Check, and an ended record never changes.
func FuzzRecord(f *testing.F) {
	f.Add([]byte(`{"v":1,"id":"d1","state":"pending","task_id":"t"}`))
	f.Add([]byte(`{"v":1,"id":"d1","state":"running","attempts":2,"cancel_requested":true}`))
	f.Add([]byte(`{"v":1,"id":"d1","state":"completed","outcome":{"status":"completed","agents":[{"agent_id":"a","status":"completed","score":1e308}]}}`))
	f.Add([]byte(`{"v":1,"id":"d1","state":"failed","started_at":"x","ended_at":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"v":2,"id":"","state":"??"}`))
	now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Record
		if json.Unmarshal(b, &r) != nil || r.Check("d") != nil {
			return
		}
		_ = r.Duration()
		_ = r.Active()
		_ = r.Meta()
		o := Outcome{Status: string(StatusCompleted)}
		var cancelEnded bool
		steps := map[string]func() (Record, error){
			"start":     func() (Record, error) { return r.Start(1, "x", now) },
			"finish":    func() (Record, error) { return r.Finish(o, now) },
			"fail":      func() (Record, error) { return r.Fail(ErrorTypeDeadlineExceeded, "late", now) },
			"cancelled": func() (Record, error) { return r.Cancelled(now) },
			"cancel": func() (Record, error) {
				out, ended, err := r.Cancel("by request", now)
				cancelEnded = ended
				return out, err
			},
		}
		for name, step := range steps {
			out, err := step()
			switch {
			case r.Terminal():
				if !errors.Is(err, ErrTerminal) {
					t.Fatalf("%s of an ended (%s) record: got %v, want ErrTerminal", name, r.State, err)
				}
			case err != nil:
				t.Fatalf("%s of a %s record: %v", name, r.State, err)
			case out.Check("d") != nil:
				t.Fatalf("%s of a %s record gave a bad record: %v", name, r.State, out.Check("d"))
			case name == "cancel" && cancelEnded != out.Terminal():
				t.Fatalf("cancel of a %s record: ended %v but state %s", r.State, cancelEnded, out.State)
			case name != "start" && name != "cancel" && !out.Terminal():
				t.Fatalf("%s of a %s record left it %s", name, r.State, out.State)
			}
		}
	})
}
