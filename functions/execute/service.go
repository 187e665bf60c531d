// Package execute is the function that submits deliberations to Ray and cancels them. It
// keeps no state: the deliberation ID is the Ray submission_id, and everything status and
// list need travels in the Ray job metadata.
package execute

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
)

// Jobs is the part of the Ray Jobs API execute needs. Errors wrap the domain sentinels:
// ErrNotFound for an unknown job, ErrAlreadyExists for a submission_id Ray has seen,
// ErrUnavailable/ErrDeadline when Ray cannot answer.
type Jobs interface {
	Submit(ctx context.Context, req ray.SubmitRequest) (string, error)
	Job(ctx context.Context, id string) (ray.JobDetails, error)
	Stop(ctx context.Context, id string) (bool, error)
	// EnsurePackage uploads a deliberation's request package unless Ray has it already.
	EnsurePackage(ctx context.Context, p ray.Package) error
}

// WorkingDirs yields the URI of the payload package, uploading it when Ray lacks it.
type WorkingDirs interface {
	WorkingDir(ctx context.Context) (string, error)
}

// Publisher stores lifecycle events (events.Bus). Errors wrap ErrUnavailable when NATS is
// down; execute then carries on and the reconciler publishes the event later.
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// Service decides how a deliberation is submitted or cancelled.
type Service struct {
	Jobs        Jobs
	WorkingDirs WorkingDirs
	Limits      domain.Limits
	JobOptions  ray.JobOptions // WorkingDir is filled per submission
	// Events is nil when events are off (ENABLE_NATS=false).
	Events Publisher
}

// publish stores a lifecycle event if events are on, and reports whether it is stored. NATS
// trouble never fails a request whose Ray side succeeded: it is logged, and the reconciler
// repairs the gap.
func (s *Service) publish(ctx context.Context, build func() (events.Event, error), logger *slog.Logger) bool {
	if s.Events == nil {
		return false
	}
	ev, err := build()
	if err == nil {
		err = s.Events.Publish(ctx, ev)
	}
	if err != nil {
		logger.Warn("lifecycle event not published; the reconciler will publish it", "event_id", ev.ID, "error", err.Error())
		return false
	}
	return true
}

// TerminalReader is implemented by an event bus that can say whether a deliberation's end
// is stored (events.Bus).
type TerminalReader interface {
	HasTerminal(ctx context.Context, id string) (bool, error)
}

// ended reports whether events are on and a terminal event of id is stored. NATS trouble
// answers false: a deliberation Ray has no record of is then submitted, which is right for
// every id except one Ray lost, the rare case the stored events exist to catch.
func (s *Service) ended(ctx context.Context, id string, logger *slog.Logger) bool {
	tr, ok := s.Events.(TerminalReader)
	if !ok {
		return false
	}
	ended, err := tr.HasTerminal(ctx, id)
	if err != nil {
		logger.Warn("cannot tell whether a deliberation Ray has no record of already ended; submitting it",
			"deliberation_id", id, "error", err.Error())
		return false
	}
	return ended
}

// Submission is the outcome of Execute.
type Submission struct {
	DeliberationID string
	// Duplicate is true when the idempotency key named a deliberation that already existed.
	Duplicate bool
}

// Execute validates and submits r. With a non-empty key the deliberation ID derives from
// it, and a repeat (concurrent or later, from any replica) returns the existing
// deliberation without a second Ray job; the same key with a different request is
// ErrConflict. Errors: ErrInvalid (with every offending field named), ErrConflict,
// ErrUnavailable/ErrDeadline when Ray cannot take the job now (safe to retry with the same
// key).
func (s *Service) Execute(ctx context.Context, r domain.Request, key, traceparent string, logger *slog.Logger) (Submission, error) {
	if err := domain.Normalize(&r, s.Limits); err != nil {
		return Submission{}, err
	}
	id := domain.NewDeliberationID()
	if key != "" {
		id = domain.DeliberationIDForKey(key)
	}
	hash := ray.RequestHash(r)
	if key != "" {
		// Most retries find the job already there: one cheap GET, no upload, no submit.
		job, err := s.Jobs.Job(ctx, id)
		switch {
		case err == nil:
			return s.existing(id, hash, job)
		case !errors.Is(err, domain.ErrNotFound):
			return Submission{}, fmt.Errorf("execute: look up %s: %w", id, err)
		}
		if s.ended(ctx, id, logger) {
			// Ray forgot it (a head restart), but it was accepted and has ended (lost by the
			// cluster, or finished): a retry must not run it a second time.
			return Submission{DeliberationID: id, Duplicate: true}, nil
		}
	}
	opts := s.JobOptions
	wd, err := s.WorkingDirs.WorkingDir(ctx)
	if err != nil {
		return Submission{}, fmt.Errorf("execute: payload package: %w", err)
	}
	opts.WorkingDir = wd
	dj, err := ray.DeliberationJob(id, r, traceparent, opts)
	if err != nil {
		return Submission{}, err
	}
	// The request travels in a package of its own, which the job names: it must be in the
	// cluster first. Content-addressed, so a retry finds it there and uploads nothing.
	if err := s.Jobs.EnsurePackage(ctx, dj.Request); err != nil {
		return Submission{}, fmt.Errorf("execute: request package of %s: %w", id, err)
	}
	sub := dj.Submit
	if _, err := s.Jobs.Submit(ctx, sub); err != nil {
		if !errors.Is(err, domain.ErrAlreadyExists) {
			return Submission{}, fmt.Errorf("execute: submit %s: %w", id, err)
		}
		// A concurrent request with the same key won the race; Ray keeps one job per
		// submission_id, so answer with that one.
		job, gerr := s.Jobs.Job(ctx, id)
		if gerr != nil {
			return Submission{}, fmt.Errorf("execute: look up %s after duplicate submit: %w", id, gerr)
		}
		return s.existing(id, hash, job)
	}
	logger.Info("deliberation submitted", "deliberation_id", id, "task_id", r.TaskID,
		"kind", string(r.Kind), "agents", len(r.Agents))
	meta, _ := domain.ParseJobMeta(sub.Metadata)
	s.publish(ctx, func() (events.Event, error) { return events.SubmittedEvent(events.SourceExecute, meta) }, logger)
	return Submission{DeliberationID: id}, nil
}

func (s *Service) existing(id, hash string, job ray.JobDetails) (Submission, error) {
	meta, ours := domain.ParseJobMeta(job.Metadata)
	if !ours {
		return Submission{}, fmt.Errorf("execute: Ray job %s exists and was not submitted by ray-executor: %w", id, domain.ErrConflict)
	}
	if meta.RequestHash != hash {
		return Submission{}, fmt.Errorf("execute: idempotency key already used for a different request (deliberation %s): %w", id, domain.ErrConflict)
	}
	return Submission{DeliberationID: id, Duplicate: true}, nil
}

// Cancellation is the outcome of Cancel.
type Cancellation struct {
	Status  domain.Status
	Message string
}

// Cancel stops a deliberation's Ray job. Cancelling a finished deliberation changes nothing
// and reports its final status. Errors: ErrInvalid for an empty or oversize id, ErrNotFound
// for an unknown one (any id this system could not have minted is unknown, unread), ErrUnavailable/ErrDeadline when Ray cannot answer.
//
// A PENDING job (waiting for its ENTRYPOINT_NUM_CPUS reservation) is not kept from
// starting by Ray's stop: Ray queues the stop and starts the driver anyway once the
// reservation fits. So for a pending job the cancelled event is stored first; the payload
// looks for it before it starts any agent, and ends at once when it finds it. Once that
// event is stored the deliberation is cancelled, whatever Ray makes of the stop.
func (s *Service) Cancel(ctx context.Context, id string, logger *slog.Logger) (Cancellation, error) {
	ours, err := domain.LookupDeliberationID(id)
	if err != nil {
		return Cancellation{}, err
	}
	if !ours {
		return Cancellation{}, fmt.Errorf("execute: cancel: no such deliberation: %w", domain.ErrNotFound)
	}
	job, err := s.Jobs.Job(ctx, id)
	if err != nil {
		return Cancellation{}, fmt.Errorf("execute: cancel %s: %w", id, err)
	}
	meta, ours := domain.ParseJobMeta(job.Metadata)
	if !ours {
		return Cancellation{}, fmt.Errorf("execute: cancel %s: %w", id, domain.ErrNotFound)
	}
	if job.Status.Terminal() {
		st := ray.DeliberationStatus(job.Status)
		return Cancellation{Status: st, Message: "deliberation had already finished: " + string(st)}, nil
	}
	cancelled := func() (events.Event, error) {
		return events.TerminalEvent(events.SourceExecute, meta, domain.StatusCancelled, nil, "cancelled by request", "cancelled")
	}
	if job.Status == ray.StatusPending {
		stored := s.publish(ctx, cancelled, logger)
		if _, err := s.Jobs.Stop(ctx, id); err != nil {
			if !stored {
				return Cancellation{}, fmt.Errorf("execute: stop %s: %w", id, err)
			}
			logger.Warn("Ray did not take the stop of a pending deliberation; its stored cancelled event keeps it from running",
				"deliberation_id", id, "error", err.Error())
		}
		logger.Info("deliberation cancelled before it started", "deliberation_id", id, "event_stored", stored)
		msg := "deliberation cancelled before it started"
		if !stored {
			msg += " (Ray job stop requested; the cancellation could not be recorded on NATS)"
		}
		return Cancellation{Status: domain.StatusCancelled, Message: msg}, nil
	}
	// A running job is stopped first: its cancelled event must not be stored for a
	// deliberation that Ray would not stop and that then completes.
	if _, err := s.Jobs.Stop(ctx, id); err != nil {
		return Cancellation{}, fmt.Errorf("execute: stop %s: %w", id, err)
	}
	logger.Info("deliberation cancelled", "deliberation_id", id)
	s.publish(ctx, cancelled, logger)
	return Cancellation{Status: domain.StatusCancelled, Message: "Ray job stopped"}, nil
}
