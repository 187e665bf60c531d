package domain

import (
	"errors"
	"fmt"
	"time"
)

// RecordVersion is the version of the record format (specs/records.md).
const RecordVersion = 1

// DeadlineGrace is added to a deliberation's timeout to give its absolute deadline: the time
// the executor needs to store the end of a deliberation whose agents ran to their timeout.
const DeadlineGrace = 30 * time.Second

// Error types a record can end with besides the agents' own.
const (
	// ErrorTypeExecutorLost: the work was delivered EXECUTOR_MAX_DELIVERIES times and no
	// executor finished it (replicas died holding it).
	ErrorTypeExecutorLost = "executor_lost"
	// ErrorTypeAllFailed: the agents ran and none completed.
	ErrorTypeAllFailed = "all_agents_failed"
	// ErrorTypeDeadlineExceeded: the deadline passed before the deliberation ended; the
	// executor refuses to start one whose deadline has passed when it pulls it.
	ErrorTypeDeadlineExceeded = "deadline_exceeded"
	// ErrorTypeInvalidRequest: the work message did not parse as a request for this id.
	ErrorTypeInvalidRequest = "invalid_request"
)

// ErrTerminal is returned for a transition out of a terminal state: the deliberation ended
// already, and its end never changes.
var ErrTerminal = errors.New("deliberation already ended")

// Record is a deliberation's one record (the JetStream KV entry d.<id>, specs/records.md).
// Execute creates it; the executor and Cancel move it on, each through the transitions
// below, by compare-and-set. Every reader renders it the same way.
type Record struct {
	V               int      `json:"v"`
	ID              string   `json:"id"`
	State           Status   `json:"state"`
	Kind            Kind     `json:"kind"`
	TaskID          string   `json:"task_id"`
	Role            string   `json:"role"`
	StoryID         string   `json:"story_id"`
	PlanID          string   `json:"plan_id"`
	TaskType        string   `json:"task_type"`
	NumAgents       int      `json:"num_agents"`
	Owner           string   `json:"owner"`
	RequestSHA256   string   `json:"request_sha256"`
	Traceparent     string   `json:"traceparent"`
	TimeoutSeconds  int32    `json:"timeout_seconds"`
	CreatedAt       string   `json:"created_at"`
	StartedAt       string   `json:"started_at"`
	EndedAt         string   `json:"ended_at"`
	Deadline        string   `json:"deadline"`
	Attempts        int      `json:"attempts"`
	Executor        string   `json:"executor"`
	CancelRequested bool     `json:"cancel_requested"`
	Outcome         *Outcome `json:"outcome"`
	Error           string   `json:"error"`
	ErrorType       string   `json:"error_type"`
	Reason          string   `json:"reason"`
}

// ActiveEntry is the index entry active.<id>: present while the record is not terminal, so
// listing the active deliberations costs what they are, never the history.
type ActiveEntry struct {
	ID        string `json:"id"`
	TaskID    string `json:"task_id"`
	Kind      Kind   `json:"kind"`
	Role      string `json:"role"`
	State     Status `json:"state"`
	NumAgents int    `json:"num_agents"`
	CreatedAt string `json:"created_at"`
	StartedAt string `json:"started_at"`
	// Owner is the record's owner: GetActiveJobs lists a caller's own (domain.Caller.Sees).
	Owner string `json:"owner"`
}

// FormatTime is the records' time format: RFC 3339 with nanoseconds, UTC.
func FormatTime(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// ParseTime reads a record time; the zero time for an empty or malformed one.
func ParseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// NewRecord is the pending record execute creates for a validated, normalized request.
func NewRecord(id string, r Request, requestHash, owner, traceparent string, now time.Time) Record {
	return Record{
		V: RecordVersion, ID: id, State: StatusPending, Kind: r.Kind, TaskID: r.TaskID, Role: r.Role,
		StoryID: r.Constraints.StoryID, PlanID: r.Constraints.PlanID, TaskType: r.TaskType(),
		NumAgents: len(r.Agents), Owner: owner, RequestSHA256: requestHash, Traceparent: traceparent,
		TimeoutSeconds: r.Constraints.TimeoutSeconds, CreatedAt: FormatTime(now),
		Deadline: FormatTime(now.Add(time.Duration(r.Constraints.TimeoutSeconds)*time.Second + DeadlineGrace)),
	}
}

// Terminal reports whether the record has ended.
func (r Record) Terminal() bool { return r.State.Terminal() }

// Active is the index entry of a record that has not ended.
func (r Record) Active() ActiveEntry {
	return ActiveEntry{ID: r.ID, TaskID: r.TaskID, Kind: r.Kind, Role: r.Role, State: r.State,
		NumAgents: r.NumAgents, CreatedAt: r.CreatedAt, StartedAt: r.StartedAt, Owner: r.Owner}
}

// Meta is what lifecycle events carry about the deliberation.
func (r Record) Meta() JobMeta {
	return JobMeta{DeliberationID: r.ID, Kind: r.Kind, TaskID: r.TaskID, Role: r.Role, StoryID: r.StoryID,
		PlanID: r.PlanID, NumAgents: r.NumAgents, TaskType: r.TaskType, RequestHash: r.RequestSHA256,
		Traceparent: r.Traceparent}
}

// Duration is how long a finished deliberation ran (zero when it never started).
func (r Record) Duration() time.Duration {
	s, e := ParseTime(r.StartedAt), ParseTime(r.EndedAt)
	if s.IsZero() || e.Before(s) {
		return 0
	}
	return e.Sub(s)
}

func (r Record) refuseTerminal(what string) error {
	if r.Terminal() {
		return fmt.Errorf("%s %s: it is %s: %w", what, r.ID, r.State, ErrTerminal)
	}
	return nil
}

// Start is the executor pulling the deliberation (delivery attempt), first or again.
func (r Record) Start(attempt int, executor string, now time.Time) (Record, error) {
	if err := r.refuseTerminal("start"); err != nil {
		return r, err
	}
	r.State, r.Attempts, r.Executor = StatusRunning, attempt, executor
	if r.StartedAt == "" {
		r.StartedAt = FormatTime(now)
	}
	return r, nil
}

// Finish ends a deliberation whose agents ran: completed when at least one agent completed.
func (r Record) Finish(o Outcome, now time.Time) (Record, error) {
	if err := r.refuseTerminal("finish"); err != nil {
		return r, err
	}
	r.Outcome = &o
	r.State = StatusFailed
	if o.Status == string(StatusCompleted) {
		r.State = StatusCompleted
	}
	if r.State == StatusFailed && r.Error == "" {
		r.Error, r.ErrorType = o.Error, ErrorTypeAllFailed
		if r.Error == "" {
			r.Error = "no agent completed"
		}
	}
	r.EndedAt = FormatTime(now)
	return r, nil
}

// Fail ends a deliberation without a result (executor_lost, deadline_exceeded, ...).
func (r Record) Fail(errorType, message string, now time.Time) (Record, error) {
	if err := r.refuseTerminal("fail"); err != nil {
		return r, err
	}
	r.State, r.ErrorType, r.Error, r.EndedAt = StatusFailed, errorType, message, FormatTime(now)
	return r, nil
}

// Cancel is a caller's cancel: a pending deliberation ends cancelled at once (the executor
// skips it when it pulls it); a running one is marked, and the executor that runs it ends it.
// ended reports which happened.
func (r Record) Cancel(reason string, now time.Time) (out Record, ended bool, err error) {
	if err := r.refuseTerminal("cancel"); err != nil {
		return r, false, err
	}
	r.Reason = reason
	if r.State == StatusPending {
		r.State, r.EndedAt = StatusCancelled, FormatTime(now)
		return r, true, nil
	}
	r.CancelRequested = true
	return r, false, nil
}

// Cancelled is the executor ending a deliberation whose cancel was requested.
func (r Record) Cancelled(now time.Time) (Record, error) {
	if err := r.refuseTerminal("cancel"); err != nil {
		return r, err
	}
	r.State, r.EndedAt = StatusCancelled, FormatTime(now)
	if r.Reason == "" {
		r.Reason = "cancelled by request"
	}
	return r, nil
}

// Expired reports whether the record has not ended and its deadline (acceptance + timeout
// + DeadlineGrace) has passed at now. A record without a deadline never expires.
func (r Record) Expired(now time.Time) bool {
	if r.Terminal() {
		return false
	}
	d := ParseTime(r.Deadline)
	return !d.IsZero() && now.After(d)
}

// Expire ends a deliberation whose deadline passed: failed, error type deadline_exceeded,
// with a message telling a deliberation that never started (no executor ran it, or none
// had room) from one that started and did not finish. Whoever notices first (status, the
// reconciler, the executor) may write it; the compare-and-set lets only one of them.
func (r Record) Expire(now time.Time) (Record, error) {
	if err := r.refuseTerminal("expire"); err != nil {
		return r, err
	}
	if !r.Expired(now) {
		return r, fmt.Errorf("expire %s: its deadline %s has not passed", r.ID, r.Deadline)
	}
	msg := fmt.Sprintf("deadline exceeded: never started: no executor took it within timeout_seconds=%d plus %s "+
		"(the executor was down, the Ray cluster unreachable, or every replica full)", r.TimeoutSeconds, DeadlineGrace)
	if r.State == StatusRunning || r.StartedAt != "" {
		msg = fmt.Sprintf("deadline exceeded: started (attempt %d) but did not finish within timeout_seconds=%d plus %s "+
			"(its executor or Ray node may have been lost)", r.Attempts, r.TimeoutSeconds, DeadlineGrace)
	}
	return r.Fail(ErrorTypeDeadlineExceeded, msg, now)
}

// Check reports what is wrong with a record read from the store, so that one bad record is
// refused alone instead of stopping a reader.
func (r Record) Check(key string) error {
	switch {
	case r.V != RecordVersion:
		return fmt.Errorf("record %s: version %d, want %d", key, r.V, RecordVersion)
	case r.ID == "":
		return fmt.Errorf("record %s: no id", key)
	}
	switch r.State {
	case StatusPending, StatusRunning, StatusCompleted, StatusFailed, StatusCancelled:
		return nil
	}
	return fmt.Errorf("record %s: unknown state %q", key, r.State)
}
