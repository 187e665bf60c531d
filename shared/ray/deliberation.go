package ray

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// ResultMarker starts the one stdout line on which the payload reports a deliberation's
// outcome as JSON; status reads it back from the job log.
const ResultMarker = "RAY_EXECUTOR_RESULT "

// PayloadRequest is the JSON the payload reads from its request package (RequestPackage). It
// is the contract between the Go side and shared/ray/payload; change both together.
type PayloadRequest struct {
	Version         int               `json:"version"`
	DeliberationID  string            `json:"deliberation_id"`
	Kind            domain.Kind       `json:"kind"`
	TaskID          string            `json:"task_id"`
	TaskDescription string            `json:"task_description"`
	Role            string            `json:"role"`
	StoryID         string            `json:"story_id"`
	PlanID          string            `json:"plan_id"`
	TimeoutSeconds  int32             `json:"timeout_seconds"`
	MaxRetries      int32             `json:"max_retries"`
	Metadata        map[string]string `json:"metadata"`
	VLLMURL         string            `json:"vllm_url"`
	VLLMModel       string            `json:"vllm_model"`
	Agents          []domain.Agent    `json:"agents"`
	AgentNumCPUs    float64           `json:"agent_num_cpus,omitempty"`
	Traceparent     string            `json:"traceparent,omitempty"`
}

// JobOptions are the operator's choices for every deliberation job.
type JobOptions struct {
	// WorkingDir is the payload package URI (Packager.WorkingDir).
	WorkingDir string
	// AgentNumCPUs is reserved per agent task; LLM calls are I/O bound, so 0 by default.
	AgentNumCPUs float64
	// EnvVars are passed to the payload (NATS settings, API keys): operator settings only,
	// never caller text (Ray expands $NAME in env_vars values).
	EnvVars map[string]string
	// EntrypointNumCPUs and EntrypointResources are reserved for each deliberation's driver.
	// They are the cluster's admission control: Ray keeps a job PENDING, with no process
	// started, until its reservation fits, so a burst queues in Ray instead of starting
	// more drivers than the nodes can give workers to (which makes agents time out
	// waiting for a worker). Zero and nil reserve nothing.
	EntrypointNumCPUs   float64
	EntrypointResources map[string]float64
}

// RequestHash identifies a normalized request's content, to tell a retried request from a
// different request that reuses an idempotency key.
func RequestHash(r domain.Request) string {
	b, _ := json.Marshal(r) // maps marshal with sorted keys: stable
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// Job is what one deliberation puts in Ray: the package its request travels in, and the
// submission that names it. Upload Request (Client.EnsurePackage) before submitting Submit:
// a job whose py_modules package is missing fails at its runtime env setup.
type Job struct {
	Submit  SubmitRequest
	Request Package
}

// DeliberationJob builds the Ray submission for a validated, normalized request, and the
// package that carries the request to the payload.
//
// The request travels as a file in a GCS package of its own, named in
// runtime_env.py_modules (RequestPackage), never in the entrypoint command, so no caller
// text ever reaches a shell. It used to travel in runtime_env.env_vars, which cannot hold a
// large request: Ray passes a worker's serialized runtime env context as one exec argument,
// and Linux refuses any single argument or environment string over 128 KiB, so the worker
// dies at exec and the job stays PENDING forever. Nor is caller text then subject to Ray's
// expansion of $NAME and ${NAME} in env_vars values: the one env var added here,
// RequestModuleEnv, holds only the module's hashed name. The job table (GET /api/jobs/)
// records only the package's URI; Ray drops the package once no job uses it.
func DeliberationJob(id string, r domain.Request, traceparent string, opts JobOptions) (Job, error) {
	pr := PayloadRequest{
		Version:         1,
		DeliberationID:  id,
		Kind:            r.Kind,
		TaskID:          r.TaskID,
		TaskDescription: r.TaskDescription,
		Role:            r.Role,
		StoryID:         r.Constraints.StoryID,
		PlanID:          r.Constraints.PlanID,
		TimeoutSeconds:  r.Constraints.TimeoutSeconds,
		MaxRetries:      r.Constraints.MaxRetries,
		Metadata:        r.Constraints.Metadata,
		VLLMURL:         r.VLLMURL,
		VLLMModel:       r.VLLMModel,
		Agents:          r.Agents,
		AgentNumCPUs:    opts.AgentNumCPUs,
		Traceparent:     traceparent,
	}
	if pr.Metadata == nil {
		pr.Metadata = map[string]string{}
	}
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	// <, > and & as themselves, not \u003c...: prompts are full of code and markup, and
	// the JSON is read by Python, never embedded in HTML.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(pr); err != nil {
		return Job{}, fmt.Errorf("ray: encode payload request: %w", err)
	}
	pkg, module := RequestPackage(body.Bytes())
	env := make(map[string]string, len(opts.EnvVars)+1)
	for k, v := range opts.EnvVars {
		env[k] = v
	}
	env[RequestModuleEnv] = module
	meta := domain.JobMeta{
		DeliberationID: id,
		Kind:           r.Kind,
		TaskID:         r.TaskID,
		Role:           r.Role,
		StoryID:        r.Constraints.StoryID,
		PlanID:         r.Constraints.PlanID,
		NumAgents:      len(r.Agents),
		TaskType:       r.TaskType(),
		RequestHash:    RequestHash(r),
		Traceparent:    traceparent,
	}
	return Job{
		Request: pkg,
		Submit: SubmitRequest{
			Entrypoint:   PayloadEntrypoint,
			SubmissionID: id,
			RuntimeEnv: map[string]any{
				"working_dir": opts.WorkingDir,
				"py_modules":  []string{pkg.URI()},
				"env_vars":    env,
			},
			Metadata:            meta.Map(),
			EntrypointNumCPUs:   opts.EntrypointNumCPUs,
			EntrypointResources: opts.EntrypointResources,
		},
	}, nil
}

// ParseResult finds the payload's result line in a job log. ok is false when the log has
// none (the driver has not finished, or died before reporting). The last marked line wins;
// the payload prints JSON on one line, so no text inside it can start a line of its own.
func ParseResult(logs string) (out domain.Outcome, ok bool, err error) {
	idx := strings.LastIndex(logs, "\n"+ResultMarker)
	start := idx + 1
	if idx < 0 {
		if !strings.HasPrefix(logs, ResultMarker) {
			return domain.Outcome{}, false, nil
		}
		start = 0
	}
	line := logs[start+len(ResultMarker):]
	if end := strings.IndexByte(line, '\n'); end >= 0 {
		line = line[:end]
	}
	if err := json.Unmarshal([]byte(strings.TrimRight(line, "\r")), &out); err != nil {
		return domain.Outcome{}, false, fmt.Errorf("ray: result line is not valid JSON: %w", err)
	}
	return out, true, nil
}

// DeliberationStatus maps a Ray job status to a deliberation status, before the payload's
// result is considered (a SUCCEEDED job whose every agent failed is still "failed").
func DeliberationStatus(s JobStatus) domain.Status {
	switch s {
	case StatusPending:
		return domain.StatusPending
	case StatusRunning:
		return domain.StatusRunning
	case StatusSucceeded:
		return domain.StatusCompleted
	case StatusStopped:
		return domain.StatusCancelled
	default:
		return domain.StatusFailed
	}
}

// Conclusion is how a finished deliberation ended, from its Ray job and the job's log.
type Conclusion struct {
	Status       domain.Status
	Outcome      *domain.Outcome // the payload's result, when it reported one
	ErrorMessage string
	ErrorType    string
}

// ResultCancelled is the status of a result line by which the payload reports that its
// deliberation was cancelled before it started (its cancelled event was already stored):
// it ran no agent.
const ResultCancelled = string(domain.StatusCancelled)

// Conclude judges a terminal job: SUCCEEDED with at least one agent completed is
// "completed"; a job that succeeded without a (valid) result, failed, or whose every agent
// failed is "failed"; a stopped job, or one whose payload reported "cancelled", is
// "cancelled". The status function and the reconciler both use it, so the status callers
// read and the terminal event on NATS always agree.
func Conclude(job JobDetails, logs string) Conclusion {
	c := Conclusion{Status: DeliberationStatus(job.Status)}
	outcome, ok, perr := ParseResult(logs)
	if ok && outcome.Status == ResultCancelled {
		// Ray starts a PENDING job's driver even after it was stopped; the payload then
		// saw the stored cancelled event and ran no agent. Ray may record that run as
		// SUCCEEDED, STOPPED or FAILED (its queued stop finding the process gone): the
		// deliberation was cancelled all the same. No Outcome: no agent ran, so there is
		// nothing to report, and the reconciler must not announce a start.
		c.Status, c.ErrorType = domain.StatusCancelled, "cancelled"
		c.ErrorMessage = "the deliberation was cancelled: " + cmp.Or(outcome.Error, "cancelled before it started")
		return c
	}
	if ok {
		c.Outcome = &outcome
	}
	switch job.Status {
	case StatusSucceeded:
		switch {
		case perr != nil:
			c.Status, c.ErrorType, c.ErrorMessage = domain.StatusFailed, "invalid_result", perr.Error()
		case !ok:
			c.Status, c.ErrorType = domain.StatusFailed, "no_result"
			c.ErrorMessage = "the Ray job succeeded without reporting a result"
		case outcome.Status != string(domain.StatusCompleted):
			c.Status, c.ErrorType, c.ErrorMessage = domain.StatusFailed, "all_agents_failed", outcome.Error
		}
	case StatusFailed:
		if ok && outcome.CompletedAgents == 0 && len(outcome.Agents) > 0 {
			c.ErrorType, c.ErrorMessage = "all_agents_failed", outcome.Error
		} else {
			c.ErrorType, c.ErrorMessage = job.ErrorType, job.Message
		}
		if c.ErrorType == "" {
			c.ErrorType = "job_failed"
		}
	case StatusStopped:
		c.ErrorType, c.ErrorMessage = "cancelled", "the deliberation was cancelled: "+job.Message
	}
	return c
}
