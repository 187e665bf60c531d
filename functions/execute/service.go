// Package execute is the function that accepts deliberations and cancels them. It never
// calls Ray on the request path: a deliberation is accepted when its record is created in
// NATS (compare-and-set, so a second submit of the same id finds it) and its work message is
// in the work queue the standing executor pulls from (specs/records.md).
package execute

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/executor"
	"github.com/fleet-ai/ray-executor/shared/records"
)

// Store is the part of the records store execute writes (records.Store). Errors wrap
// ErrUnavailable/ErrDeadline when NATS cannot answer.
type Store interface {
	Create(ctx context.Context, r domain.Record) error
	Get(ctx context.Context, id string) (domain.Record, uint64, error)
	Update(ctx context.Context, id string, change func(domain.Record) (domain.Record, error)) (domain.Record, error)
	PutActive(ctx context.Context, e domain.ActiveEntry) error
	Enqueue(ctx context.Context, id string, body []byte) error
	// MaxPayload is the largest work message NATS takes (0: not known yet).
	MaxPayload() int64
	RequestCancel(id string) error
	WaitTerminal(ctx context.Context, id string) (domain.Record, error)
	records.Finisher
}

// Publisher stores lifecycle events (natsbus.Bus).
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// Service decides how a deliberation is accepted or cancelled.
type Service struct {
	Store  Store
	Events Publisher
	Limits domain.Limits
	// Poke, when set, is called after each acceptance: it wakes the deployer, which makes
	// sure an executor runs (off the request path).
	Poke func()
	// CancelWait bounds how long Cancel waits for the executor to end a running
	// deliberation before answering (default 3 s).
	CancelWait time.Duration
	Now        func() time.Time
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// errForeign marks a deliberation the caller does not own (Cancel answers it as unknown).
var errForeign = errors.New("another caller's deliberation")

// Submission is the outcome of Execute.
type Submission struct {
	DeliberationID string
	// Duplicate is true when the idempotency key named a deliberation that already existed.
	Duplicate bool
}

// Execute validates and accepts r. With a non-empty key the deliberation ID derives from
// it, and a repeat (concurrent or later, from any replica) returns the existing
// deliberation without running it again; the same key with a different request is
// ErrConflict. Errors: ErrInvalid (with every offending field named), ErrConflict,
// ErrUnavailable/ErrDeadline when NATS cannot take it now (safe to retry with the same key:
// a retry completes whatever step was missing).
//
// The deliberation is caller's (its record's owner): only caller and admins see it. Keys
// are the caller's own (domain.Caller.IdempotencyNamespace): another caller's same key
// names another deliberation.
func (s *Service) Execute(ctx context.Context, r domain.Request, key, traceparent string, caller domain.Caller, logger *slog.Logger) (Submission, error) {
	if err := domain.Normalize(&r, s.Limits); err != nil {
		return Submission{}, err
	}
	id := domain.NewDeliberationID()
	if key != "" {
		id = domain.DeliberationIDForKey(caller.IdempotencyNamespace(key))
	}
	hash := executor.RequestHash(r)
	body, err := executor.WorkMessage(id, r, traceparent)
	if err != nil {
		return Submission{}, err
	}
	// Checked before the record is created: a work message NATS refuses would leave a
	// pending record that nothing ever runs or ends, and a retry could not get past it.
	if max := s.Store.MaxPayload(); max > 0 && int64(len(body)) > max {
		return Submission{}, fmt.Errorf("execute: the request is %d bytes as the executor's work message, more than the %d bytes "+
			"the NATS server takes (its max_payload): shorten task_description or the prompt templates: %w", len(body), max, domain.ErrInvalid)
	}
	rec := domain.NewRecord(id, r, hash, caller.Name, traceparent, s.now())
	err = s.Store.Create(ctx, rec)
	duplicate := errors.Is(err, domain.ErrAlreadyExists)
	switch {
	case duplicate:
		stored, _, gerr := s.Store.Get(ctx, id)
		if gerr != nil {
			return Submission{}, fmt.Errorf("execute: look up %s: %w", id, gerr)
		}
		if stored.RequestSHA256 != hash {
			return Submission{}, fmt.Errorf("execute: idempotency key already used for a different request (deliberation %s): %w", id, domain.ErrConflict)
		}
		if stored.State != domain.StatusPending {
			return Submission{DeliberationID: id, Duplicate: true}, nil
		}
		// Still pending: the first submit may have stopped before queueing it. Queueing
		// again is harmless (the queue drops the copy by its id) and repairs that.
		rec = stored
	case err != nil:
		return Submission{}, fmt.Errorf("execute: record %s: %w", id, err)
	}
	if err := s.Store.PutActive(ctx, rec.Active()); err != nil {
		return Submission{}, fmt.Errorf("execute: index %s: %w", id, err)
	}
	if err := s.Store.Enqueue(ctx, id, body); err != nil {
		return Submission{}, fmt.Errorf("execute: queue %s: %w", id, err)
	}
	if s.Poke != nil {
		s.Poke()
	}
	// The counter and the event are stored once by their Nats-Msg-Id, so a duplicate of a
	// pending deliberation writes them too: a first submit that failed after creating the
	// record never got to them, and its retry completes them.
	if err := records.CountFor(ctx, s.Store, records.CountSubmitted, rec.Owner, id+".submitted", 1); err != nil {
		logger.Warn("the submitted counter was not incremented", "deliberation_id", id, "error", err.Error())
	}
	if ev, err := events.SubmittedEvent(events.SourceExecute, rec.Meta()); err == nil && s.Events != nil {
		if err := s.Events.Publish(ctx, ev); err != nil {
			logger.Warn("the submitted event was not published", "deliberation_id", id, "error", err.Error())
		}
	}
	if duplicate {
		return Submission{DeliberationID: id, Duplicate: true}, nil
	}
	logger.Info("deliberation accepted", "deliberation_id", id, "task_id", r.TaskID,
		"kind", string(r.Kind), "agents", len(r.Agents))
	return Submission{DeliberationID: id}, nil
}

// Cancellation is the outcome of Cancel.
type Cancellation struct {
	Status  domain.Status
	Message string
}

// Cancel ends a deliberation. A queued one ends cancelled at once (the executor skips it
// when it pulls it). A running one is marked and the executor holding it is told; its
// agent calls are cancelled and it ends cancelled, which Cancel waits for (CancelWait).
// Cancelling a finished deliberation changes nothing and reports its final status. Errors:
// ErrInvalid for an empty or oversize id, ErrNotFound for an unknown one (any id this
// system could not have minted is unknown, unread), ErrUnavailable/ErrDeadline when NATS
// cannot answer.
func (s *Service) Cancel(ctx context.Context, id string, caller domain.Caller, logger *slog.Logger) (Cancellation, error) {
	ours, err := domain.LookupDeliberationID(id)
	if err != nil {
		return Cancellation{}, err
	}
	if !ours {
		return Cancellation{}, fmt.Errorf("execute: cancel: no such deliberation: %w", domain.ErrNotFound)
	}
	var ended bool
	rec, err := s.Store.Update(ctx, id, func(r domain.Record) (domain.Record, error) {
		if !caller.Sees(r.Owner) {
			return r, errForeign
		}
		next, e, err := r.Cancel("cancelled by request", s.now())
		ended = e
		return next, err
	})
	if errors.Is(err, errForeign) {
		// Answered exactly as an id with no record is (records.Store.Get's words).
		err = fmt.Errorf("records: %s: %w", id, domain.ErrNotFound)
	}
	switch {
	case errors.Is(err, domain.ErrTerminal):
		return Cancellation{Status: rec.State, Message: "deliberation had already finished: " + string(rec.State)}, nil
	case err != nil:
		return Cancellation{}, fmt.Errorf("execute: cancel %s: %w", id, err)
	}
	if ended {
		records.AfterTerminal(ctx, s.Store, s.Events, rec, events.SourceExecute, logger)
		logger.Info("deliberation cancelled before it started", "deliberation_id", id)
		return Cancellation{Status: domain.StatusCancelled, Message: "deliberation cancelled before it started"}, nil
	}
	if err := s.Store.RequestCancel(id); err != nil {
		logger.Warn("the cancel signal was not sent; the executor sees the request when it next reads the record",
			"deliberation_id", id, "error", err.Error())
	}
	wait := s.CancelWait
	if wait <= 0 {
		wait = 3 * time.Second
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	final, err := s.Store.WaitTerminal(wctx, id)
	if err == nil && final.Terminal() {
		logger.Info("deliberation cancelled", "deliberation_id", id, "status", string(final.State))
		if final.State != domain.StatusCancelled {
			return Cancellation{Status: final.State, Message: "deliberation finished before the cancel reached it: " + string(final.State)}, nil
		}
		return Cancellation{Status: domain.StatusCancelled, Message: "deliberation cancelled; its agent calls were stopped"}, nil
	}
	logger.Info("cancel requested; the executor has not ended the deliberation yet", "deliberation_id", id)
	return Cancellation{Status: domain.StatusCancelled,
		Message: "cancel requested: the executor stops its agents and records it as cancelled"}, nil
}
