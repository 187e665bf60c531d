package ray

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// JobStatus is the status of a Ray job.
type JobStatus string

// Ray job statuses. A job moves PENDING -> RUNNING -> one of the terminal statuses.
const (
	StatusPending   JobStatus = "PENDING"
	StatusRunning   JobStatus = "RUNNING"
	StatusStopped   JobStatus = "STOPPED"
	StatusSucceeded JobStatus = "SUCCEEDED"
	StatusFailed    JobStatus = "FAILED"
)

// Terminal reports whether the job has finished (STOPPED, SUCCEEDED or FAILED) and will
// not change status again.
func (s JobStatus) Terminal() bool {
	switch s {
	case StatusStopped, StatusSucceeded, StatusFailed:
		return true
	}
	return false
}

// SubmitRequest is the body of POST /api/jobs/. Zero-valued optional fields are left out
// of the JSON, because older Ray versions reject keys they do not know.
type SubmitRequest struct {
	// Entrypoint is the shell command the job runs. Required.
	Entrypoint string `json:"entrypoint"`
	// SubmissionID names the job; Ray generates one ("raysubmit_...") when empty. Ray
	// refuses a SubmissionID it has seen before (domain.ErrAlreadyExists).
	SubmissionID string `json:"submission_id,omitempty"`
	// RuntimeEnv is Ray's runtime_env (working_dir, env_vars, pip, ...).
	RuntimeEnv map[string]any `json:"runtime_env,omitempty"`
	// Metadata is attached to the job and returned in JobDetails.
	Metadata map[string]string `json:"metadata,omitempty"`
	// Resources reserved for the entrypoint (driver) process.
	EntrypointNumCPUs   float64            `json:"entrypoint_num_cpus,omitempty"`
	EntrypointNumGPUs   float64            `json:"entrypoint_num_gpus,omitempty"`
	EntrypointMemory    int64              `json:"entrypoint_memory,omitempty"` // bytes
	EntrypointResources map[string]float64 `json:"entrypoint_resources,omitempty"`
}

// JobDetails describes one job as GET /api/jobs/{id} reports it.
type JobDetails struct {
	// Type is "SUBMISSION" for jobs submitted through the Jobs API and "DRIVER" for
	// drivers that connected to the cluster directly (those have no SubmissionID).
	Type string
	// JobID is Ray's internal job id (hex). Ray only sets it once the driver connects to
	// the cluster (calls ray.init), so it is empty for many submission jobs.
	JobID        string
	SubmissionID string
	Status       JobStatus
	Entrypoint   string
	// Message is Ray's human-readable status message.
	Message string
	// ErrorType classifies a failure (e.g. "JOB_SUPERVISOR_ACTOR_START_FAILURE"); empty
	// when the job has not failed.
	ErrorType string
	// StartTime and EndTime are zero when Ray has not reported them.
	StartTime time.Time
	EndTime   time.Time
	Metadata  map[string]string
	// RuntimeEnv is the runtime_env the job was submitted with, as Ray reports it, left
	// undecoded: the deployer reads job details and needs none of it.
	RuntimeEnv json.RawMessage
	// DriverExitCode is nil until the driver has exited (and for stopped jobs).
	DriverExitCode *int
}

// PackageMissing reports whether the job failed because Ray could not download a GCS
// package of its runtime_env (typically the working_dir package expired after its pin
// ran out). Callers then Invalidate their Packager and submit again under a new id.
func (j JobDetails) PackageMissing() bool {
	return j.Status == StatusFailed && j.ErrorType == "RUNTIME_ENV_SETUP_FAILURE" &&
		strings.Contains(j.Message, "Failed to download runtime_env file package")
}

// jobDetailsJSON is the wire form of JobDetails. JSON null leaves a field at its zero
// value, which is what we want for the many nullable fields.
type jobDetailsJSON struct {
	Type           string            `json:"type"`
	JobID          string            `json:"job_id"`
	SubmissionID   string            `json:"submission_id"`
	Status         JobStatus         `json:"status"`
	Entrypoint     string            `json:"entrypoint"`
	Message        string            `json:"message"`
	ErrorType      string            `json:"error_type"`
	StartTime      int64             `json:"start_time"` // Unix milliseconds
	EndTime        int64             `json:"end_time"`   // Unix milliseconds
	Metadata       map[string]string `json:"metadata"`
	RuntimeEnv     json.RawMessage   `json:"runtime_env"`
	DriverExitCode *int              `json:"driver_exit_code"`
}

func (j jobDetailsJSON) details() JobDetails {
	return JobDetails{
		Type:           j.Type,
		JobID:          j.JobID,
		SubmissionID:   j.SubmissionID,
		Status:         j.Status,
		Entrypoint:     j.Entrypoint,
		Message:        j.Message,
		ErrorType:      j.ErrorType,
		StartTime:      fromMillis(j.StartTime),
		EndTime:        fromMillis(j.EndTime),
		Metadata:       j.Metadata,
		RuntimeEnv:     j.RuntimeEnv,
		DriverExitCode: j.DriverExitCode,
	}
}

// fromMillis converts Unix milliseconds to a UTC time; 0 (absent) becomes the zero time.
func fromMillis(ms int64) time.Time {
	if ms <= 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// Version is the answer of GET /api/version.
type Version struct {
	// Version is the version of the dashboard's REST API (e.g. "4").
	Version     string `json:"version"`
	RayVersion  string `json:"ray_version"`
	RayCommit   string `json:"ray_commit"`
	SessionName string `json:"session_name"`
}

// Version returns the dashboard's API and Ray versions. Besides identifying the cluster it
// is a cheap health check. Errors wrap domain.ErrUnavailable (unreachable, 5xx, or an
// unparsable answer), domain.ErrUnauthenticated, domain.ErrDeadline or context.Canceled.
func (c *Client) Version(ctx context.Context) (Version, error) {
	var v Version
	err := c.doJSON(ctx, request{op: "get version", method: http.MethodGet, path: "/api/version", idempotent: true}, &v)
	return v, err
}

// Submit submits a job and returns its submission id (req.SubmissionID, or the one Ray
// generated). Errors: domain.ErrInvalid for an empty Entrypoint or negative resources
// (checked before any request) and for a request Ray rejects (400);
// domain.ErrAlreadyExists when req.SubmissionID was used before (Ray answers 500 "Job with
// submission_id ... already exists"); domain.ErrUnavailable when Ray cannot take the job
// now (e.g. "No available agent to submit job") or cannot be reached;
// domain.ErrUnauthenticated, domain.ErrDeadline or context.Canceled.
//
// A submission whose outcome is unknown (a timeout, a dropped connection) may still have
// been accepted; resubmitting with the same SubmissionID is safe and answers
// domain.ErrAlreadyExists in that case.
//
// Submit is the one call never retried here: without a SubmissionID a retry of a
// submission Ray did take runs the job twice, and with one the caller must see
// ErrAlreadyExists and decide (execute then reads the job it already made). The caller
// owns that decision, so Submit makes one attempt (the breaker still applies).
func (c *Client) Submit(ctx context.Context, req SubmitRequest) (string, error) {
	op := "submit job"
	if req.SubmissionID != "" {
		op += " " + req.SubmissionID
	}
	if req.Entrypoint == "" {
		return "", fmt.Errorf("ray: %s: empty entrypoint: %w", op, domain.ErrInvalid)
	}
	if req.EntrypointNumCPUs < 0 || req.EntrypointNumGPUs < 0 || req.EntrypointMemory < 0 {
		return "", fmt.Errorf("ray: %s: negative entrypoint resources: %w", op, domain.ErrInvalid)
	}
	body, err := jsonBody(op, req)
	if err != nil {
		return "", err
	}
	var out struct {
		JobID        string `json:"job_id"`
		SubmissionID string `json:"submission_id"`
	}
	err = c.doJSON(ctx, request{
		op: op, method: http.MethodPost, path: "/api/jobs/",
		body: body, contentType: "application/json",
	}, &out)
	if err != nil {
		return "", err
	}
	if out.SubmissionID == "" {
		// Unparsable-success rule: Ray accepted something but did not say what.
		return "", fmt.Errorf("ray: %s: response has no submission_id: %w", op, domain.ErrUnavailable)
	}
	return out.SubmissionID, nil
}

// Job returns the details of the job with the given submission id (or Ray job id).
// Errors: domain.ErrInvalid for an empty id (no request is made); domain.ErrNotFound when
// Ray does not know the job; domain.ErrUnavailable, domain.ErrUnauthenticated,
// domain.ErrDeadline or context.Canceled.
func (c *Client) Job(ctx context.Context, id string) (JobDetails, error) {
	op := "get job " + id
	seg, err := segment(op, "job id", id)
	if err != nil {
		return JobDetails{}, err
	}
	var j jobDetailsJSON
	if err := c.doJSON(ctx, request{op: op, method: http.MethodGet, path: "/api/jobs/" + seg, idempotent: true}, &j); err != nil {
		return JobDetails{}, err
	}
	return j.details(), nil
}

// Jobs lists every job Ray knows, including DRIVER jobs (which have no SubmissionID), in
// Ray's order. Errors wrap domain.ErrUnavailable, domain.ErrUnauthenticated,
// domain.ErrDeadline or context.Canceled.
func (c *Client) Jobs(ctx context.Context) ([]JobDetails, error) {
	var list []jobDetailsJSON
	if err := c.doJSON(ctx, request{op: "list jobs", method: http.MethodGet, path: "/api/jobs/", idempotent: true}, &list); err != nil {
		return nil, err
	}
	out := make([]JobDetails, len(list))
	for i, j := range list {
		out[i] = j.details()
	}
	return out, nil
}

// Stop asks Ray to stop the job. It returns true when a stop was requested, false when
// the job had already finished. Ray answers true while the job's supervisor actor lives,
// which can be a moment after the status reads STOPPED. It is retried like a GET: stopping twice is harmless (a
// retry after a lost answer may report false). Stopping is asynchronous: poll Job until the status is
// terminal (STOPPED). Errors: domain.ErrInvalid for an empty id (no request is made);
// domain.ErrNotFound for an unknown job; domain.ErrUnavailable,
// domain.ErrUnauthenticated, domain.ErrDeadline or context.Canceled.
func (c *Client) Stop(ctx context.Context, id string) (bool, error) {
	op := "stop job " + id
	seg, err := segment(op, "job id", id)
	if err != nil {
		return false, err
	}
	var out struct {
		Stopped bool `json:"stopped"`
	}
	err = c.doJSON(ctx, request{op: op, method: http.MethodPost, path: "/api/jobs/" + seg + "/stop", idempotent: true}, &out)
	return out.Stopped, err
}

// Delete removes a terminal job from Ray's job table; `ray job logs` then answers 404, but
// Ray leaves the driver's log file in the head's session directory. Errors:
// domain.ErrInvalid for an empty id (no request is made); domain.ErrNotFound for an unknown
// (or already deleted) job; domain.ErrUnavailable when Ray cannot be reached or refuses,
// which includes a job that is not terminal yet (Ray answers 500 "... it is in a
// non-terminal state"; retry after it finishes or Stop it first);
// domain.ErrUnauthenticated, domain.ErrDeadline or context.Canceled. It is retried like a GET, so a retry after a lost answer may report
// domain.ErrNotFound for a job this call deleted.
func (c *Client) Delete(ctx context.Context, id string) error {
	op := "delete job " + id
	seg, err := segment(op, "job id", id)
	if err != nil {
		return err
	}
	var out struct {
		Deleted bool `json:"deleted"`
	}
	if err := c.doJSON(ctx, request{op: op, method: http.MethodDelete, path: "/api/jobs/" + seg, idempotent: true}, &out); err != nil {
		return err
	}
	if !out.Deleted {
		return fmt.Errorf("ray: %s: Ray answered deleted=false: %w", op, domain.ErrUnavailable)
	}
	return nil
}

// Logs returns the job's whole log so far ("" before the driver starts). Logs of more than
// 64 MiB are refused with an error wrapping domain.ErrUnavailable. Other errors:
// domain.ErrInvalid for an empty id (no request is made); domain.ErrNotFound for an
// unknown job; domain.ErrUnavailable, domain.ErrUnauthenticated, domain.ErrDeadline or
// context.Canceled.
func (c *Client) Logs(ctx context.Context, id string) (string, error) {
	op := "get logs of job " + id
	seg, err := segment(op, "job id", id)
	if err != nil {
		return "", err
	}
	var out struct {
		Logs string `json:"logs"`
	}
	err = c.doJSON(ctx, request{
		op: op, method: http.MethodGet, path: "/api/jobs/" + seg + "/logs", limit: maxLogsBody, idempotent: true,
	}, &out)
	return out.Logs, err
}
