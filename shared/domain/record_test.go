package domain

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

var recT0 = time.Date(2026, 12, 1, 10, 0, 0, 123456789, time.UTC)

func pendingRecord(t *testing.T) Record {
	t.Helper()
	r := validRequest(KindDeliberation)
	r.Constraints.TimeoutSeconds = 90
	r.Constraints.Metadata = map[string]string{"task_type": "review"}
	return NewRecord("d1", r, "hash", "owner", "00-tp-01", recT0)
}

func TestNewRecord(t *testing.T) {
	r := validRequest(KindDeliberation)
	r.Constraints.TimeoutSeconds = 90
	r.Constraints.Metadata = map[string]string{"task_type": "review"}
	local := recT0.In(time.FixedZone("x", 5*3600))
	rec := NewRecord("d1", r, "hash", "owner", "00-tp-01", local)
	if rec.V != RecordVersion || rec.ID != "d1" || rec.State != StatusPending || rec.Kind != KindDeliberation ||
		rec.TaskID != r.TaskID || rec.Role != r.Role || rec.StoryID != r.Constraints.StoryID ||
		rec.TaskType != "review" || rec.NumAgents != len(r.Agents) || rec.Owner != "owner" ||
		rec.RequestSHA256 != "hash" || rec.Traceparent != "00-tp-01" || rec.TimeoutSeconds != 90 {
		t.Errorf("got %+v", rec)
	}
	if rec.CreatedAt != "2026-12-01T10:00:00.123456789Z" {
		t.Errorf("got created_at %q, want RFC 3339 with nanoseconds in UTC", rec.CreatedAt)
	}
	want := recT0.Add(90*time.Second + DeadlineGrace)
	if !ParseTime(rec.Deadline).Equal(want) || rec.Deadline != FormatTime(want) {
		t.Errorf("got deadline %q, want created + timeout + grace = %s", rec.Deadline, FormatTime(want))
	}
	if rec.StartedAt != "" || rec.EndedAt != "" || rec.Attempts != 0 || rec.Outcome != nil || rec.Terminal() {
		t.Errorf("a new record must be untouched: %+v", rec)
	}
	if err := rec.Check("d.d1"); err != nil {
		t.Errorf("a new record fails its check: %v", err)
	}
	// The JSON field names are the contract with the Python executor.
	b, _ := json.Marshal(rec)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	for _, k := range []string{"v", "id", "state", "kind", "task_id", "role", "story_id", "plan_id", "task_type",
		"num_agents", "owner", "request_sha256", "traceparent", "timeout_seconds", "created_at", "started_at",
		"ended_at", "deadline", "attempts", "executor", "cancel_requested", "outcome", "error", "error_type", "reason"} {
		if _, ok := m[k]; !ok {
			t.Errorf("record JSON lacks %q", k)
		}
	}
	if len(m) != 25 || m["outcome"] != nil {
		t.Errorf("got %d fields and outcome %v, want the 25 of specs/records.md and a null outcome", len(m), m["outcome"])
	}
}

func TestRecordStart(t *testing.T) {
	p := pendingRecord(t)
	r, err := p.Start(1, "replica-1", recT0.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if r.State != StatusRunning || r.Attempts != 1 || r.Executor != "replica-1" || r.StartedAt != FormatTime(recT0.Add(time.Second)) {
		t.Errorf("pending -> running: got %+v", r)
	}
	if p.State != StatusPending {
		t.Error("Start changed the record it was called on")
	}
	// running -> running: a redelivery keeps the first start time and counts the attempt.
	r2, err := r.Start(2, "replica-2", recT0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if r2.State != StatusRunning || r2.Attempts != 2 || r2.Executor != "replica-2" || r2.StartedAt != r.StartedAt {
		t.Errorf("running -> running: got %+v", r2)
	}
}

func outcome(status string, errMsg string) Outcome {
	return Outcome{Version: 1, DeliberationID: "d1", Status: status, NumAgents: 1, Error: errMsg,
		Agents: []AgentResult{{AgentID: "a1", Status: status}}}
}

func TestRecordFinish(t *testing.T) {
	p := pendingRecord(t)
	running, _ := p.Start(1, "x", recT0.Add(time.Second))
	end := recT0.Add(5 * time.Second)
	for _, from := range []Record{p, running} {
		c, err := from.Finish(outcome("completed", ""), end)
		if err != nil {
			t.Fatal(err)
		}
		if c.State != StatusCompleted || c.Outcome == nil || c.Outcome.Status != "completed" || c.EndedAt != FormatTime(end) ||
			c.Error != "" || c.ErrorType != "" {
			t.Errorf("%s -> completed: got %+v", from.State, c)
		}
		f, err := from.Finish(outcome("failed", "all 1 agents failed"), end)
		if err != nil {
			t.Fatal(err)
		}
		if f.State != StatusFailed || f.ErrorType != ErrorTypeAllFailed || f.Error != "all 1 agents failed" || f.Outcome == nil {
			t.Errorf("%s -> failed: got %+v", from.State, f)
		}
	}
	if running.Duration() != 0 {
		t.Errorf("an unfinished record has duration %v", running.Duration())
	}
	done, _ := running.Finish(outcome("completed", ""), end)
	if done.Duration() != 4*time.Second {
		t.Errorf("got duration %v, want 4s (started_at to ended_at)", done.Duration())
	}
	// Anything but "completed" is a failure, with a message even when the outcome has none.
	for _, st := range []string{"failed", "cancelled", "", "COMPLETED"} {
		f, _ := running.Finish(outcome(st, ""), end)
		if f.State != StatusFailed || f.ErrorType != ErrorTypeAllFailed || f.Error != "no agent completed" {
			t.Errorf("outcome status %q: got %s %q %q", st, f.State, f.ErrorType, f.Error)
		}
	}
	if ErrorTypeAllFailed != "all_agents_failed" {
		t.Errorf("ErrorTypeAllFailed is %q; the payload writes all_agents_failed", ErrorTypeAllFailed)
	}
}

func TestRecordFail(t *testing.T) {
	p := pendingRecord(t)
	running, _ := p.Start(3, "x", recT0)
	for _, from := range []Record{p, running} {
		f, err := from.Fail(ErrorTypeExecutorLost, "delivered 4 times", recT0.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if f.State != StatusFailed || f.ErrorType != "executor_lost" || f.Error != "delivered 4 times" ||
			f.EndedAt != FormatTime(recT0.Add(time.Minute)) || f.Outcome != nil {
			t.Errorf("%s -> failed: got %+v", from.State, f)
		}
	}
}

func TestRecordCancel(t *testing.T) {
	p := pendingRecord(t)
	c, ended, err := p.Cancel("by caller", recT0.Add(time.Second))
	if err != nil || !ended {
		t.Fatalf("pending: got ended=%v err=%v, want ended at once", ended, err)
	}
	if c.State != StatusCancelled || c.Reason != "by caller" || c.EndedAt == "" || c.CancelRequested {
		t.Errorf("pending -> cancelled: got %+v", c)
	}

	running, _ := p.Start(1, "x", recT0)
	m, ended, err := running.Cancel("by caller", recT0.Add(time.Second))
	if err != nil || ended {
		t.Fatalf("running: got ended=%v err=%v, want marked only", ended, err)
	}
	if m.State != StatusRunning || !m.CancelRequested || m.Reason != "by caller" || m.EndedAt != "" {
		t.Errorf("running -> running(cancel_requested): got %+v", m)
	}
	// running(cancel_requested) -> cancelled by the executor; the caller's reason stays.
	x, err := m.Cancelled(recT0.Add(2 * time.Second))
	if err != nil || x.State != StatusCancelled || x.Reason != "by caller" || x.EndedAt != FormatTime(recT0.Add(2*time.Second)) {
		t.Errorf("cancel_requested -> cancelled: got %+v, %v", x, err)
	}
	y, err := running.Cancelled(recT0)
	if err != nil || y.State != StatusCancelled || y.Reason != "cancelled by request" {
		t.Errorf("Cancelled with no reason: got %+v, %v", y, err)
	}
}

func TestTerminalRecordsNeverChange(t *testing.T) {
	p := pendingRecord(t)
	running, _ := p.Start(1, "x", recT0)
	completed, _ := running.Finish(outcome("completed", ""), recT0)
	failed, _ := running.Fail(ErrorTypeExecutorLost, "lost", recT0)
	cancelled, _, _ := p.Cancel("r", recT0)
	later := recT0.Add(time.Hour)
	for _, r := range []Record{completed, failed, cancelled} {
		if !r.Terminal() {
			t.Fatalf("%s is not terminal", r.State)
		}
		check := func(what string, got Record, err error) {
			t.Helper()
			if !errors.Is(err, ErrTerminal) {
				t.Errorf("%s out of %s: got %v, want ErrTerminal", what, r.State, err)
			}
			if err != nil && !strings.Contains(err.Error(), string(r.State)) {
				t.Errorf("%s out of %s: error %q does not name the state", what, r.State, err)
			}
			if got.State != r.State || got.EndedAt != r.EndedAt || got.CancelRequested != r.CancelRequested {
				t.Errorf("%s out of %s changed it: %+v", what, r.State, got)
			}
		}
		got, err := r.Start(2, "y", later)
		check("start", got, err)
		got, err = r.Finish(outcome("completed", ""), later)
		check("finish", got, err)
		got, err = r.Fail("x", "y", later)
		check("fail", got, err)
		got, ended, err := r.Cancel("again", later)
		check("cancel", got, err)
		if ended {
			t.Errorf("cancel out of %s reports it ended", r.State)
		}
		got, err = r.Cancelled(later)
		check("cancelled", got, err)
	}
}

func TestRecordActiveAndMeta(t *testing.T) {
	r, _ := pendingRecord(t).Start(1, "x", recT0.Add(time.Second))
	a := r.Active()
	if a.ID != "d1" || a.TaskID != r.TaskID || a.Kind != r.Kind || a.Role != r.Role || a.State != StatusRunning ||
		a.NumAgents != r.NumAgents || a.CreatedAt != r.CreatedAt || a.StartedAt != r.StartedAt || a.Owner != r.Owner {
		t.Errorf("got active entry %+v of %+v", a, r)
	}
	b, _ := json.Marshal(a)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	if len(m) != 9 {
		t.Errorf("got active entry JSON %s, want the 9 fields of specs/records.md", b)
	}
	meta := r.Meta()
	if meta.DeliberationID != "d1" || meta.TaskID != r.TaskID || meta.NumAgents != r.NumAgents ||
		meta.RequestHash != "hash" || meta.Traceparent != "00-tp-01" || meta.TaskType != "review" {
		t.Errorf("got meta %+v", meta)
	}
}

func TestRecordCheck(t *testing.T) {
	good := pendingRecord(t)
	if err := good.Check("d.d1"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Record)
		want string
	}{
		{"version", func(r *Record) { r.V = 2 }, "version 2"},
		{"no version", func(r *Record) { r.V = 0 }, "version 0"},
		{"no id", func(r *Record) { r.ID = "" }, "no id"},
		{"unknown state", func(r *Record) { r.State = "exploded" }, `unknown state "exploded"`},
		{"not_found is not a record state", func(r *Record) { r.State = StatusNotFound }, "unknown state"},
	} {
		r := good
		tc.mod(&r)
		err := r.Check("d.key")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "d.key") {
			t.Errorf("%s: got %v, want an error naming the key and %q", tc.name, err, tc.want)
		}
	}
	for _, s := range []Status{StatusPending, StatusRunning, StatusCompleted, StatusFailed, StatusCancelled} {
		r := good
		r.State = s
		if err := r.Check("k"); err != nil {
			t.Errorf("state %s refused: %v", s, err)
		}
	}
}

func TestParseTime(t *testing.T) {
	if !ParseTime(FormatTime(recT0)).Equal(recT0) {
		t.Error("FormatTime/ParseTime do not round-trip")
	}
	if !ParseTime("").IsZero() || !ParseTime("yesterday").IsZero() {
		t.Error("an empty or malformed time must parse as zero")
	}
	r := Record{StartedAt: FormatTime(recT0), EndedAt: FormatTime(recT0.Add(-time.Second))}
	if r.Duration() != 0 {
		t.Errorf("an end before the start gives %v, want 0", r.Duration())
	}
}

func TestExpire(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	r := NewRecord("d1", Request{Kind: KindDeliberation, Agents: make([]Agent, 1), Constraints: Constraints{TimeoutSeconds: 10}}, "h", "", "", now)
	deadline := now.Add(10*time.Second + DeadlineGrace)
	if got := ParseTime(r.Deadline); !got.Equal(deadline) {
		t.Fatalf("deadline %s, want acceptance + timeout + grace = %s", got, deadline)
	}
	if r.Expired(deadline) || !r.Expired(deadline.Add(time.Nanosecond)) {
		t.Errorf("Expired at the deadline %v and just after %v, want false then true", r.Expired(deadline), r.Expired(deadline.Add(time.Nanosecond)))
	}
	if _, err := r.Expire(deadline); err == nil {
		t.Error("Expire before the deadline: got nil, want an error")
	}
	late := deadline.Add(time.Second)
	pending, err := r.Expire(late)
	if err != nil || pending.State != StatusFailed || pending.ErrorType != ErrorTypeDeadlineExceeded ||
		!strings.Contains(pending.Error, "never started") || pending.EndedAt != FormatTime(late) {
		t.Errorf("pending: got %+v %v, want failed deadline_exceeded, never started, ended at %s", pending, err, late)
	}
	run, _ := r.Start(3, "replica", now.Add(time.Second))
	started, err := run.Expire(late)
	if err != nil || !strings.Contains(started.Error, "started (attempt 3)") {
		t.Errorf("running: got %q %v, want it to say started (attempt 3)", started.Error, err)
	}
	if pending.Expired(late.Add(time.Hour)) {
		t.Error("an ended record reads as expired")
	}
	if _, err := pending.Expire(late); !errors.Is(err, ErrTerminal) {
		t.Errorf("Expire of an ended record: got %v, want ErrTerminal", err)
	}
	if (Record{State: StatusPending}).Expired(late) {
		t.Error("a record without a deadline reads as expired")
	}
}
