// Package status is the function that reports a deliberation's state and results. It reads
// everything from Ray (the job record and the payload's result line in the job log), so a
// restarted or scaled-out replica answers exactly as the one before it.
package status

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
)

// Jobs is the part of the Ray Jobs API status needs. Errors wrap the domain sentinels:
// ErrNotFound for an unknown job, ErrUnavailable/ErrDeadline when Ray cannot answer.
type Jobs interface {
	Job(ctx context.Context, id string) (ray.JobDetails, error)
	Logs(ctx context.Context, id string) (string, error)
}

// Report is what status knows about one deliberation.
type Report struct {
	DeliberationID string
	Status         domain.Status
	Meta           domain.JobMeta
	// Outcome is the payload's result, present once it reported one.
	Outcome      *domain.Outcome
	ErrorMessage string
	ErrorType    string
	StartTime    time.Time
	EndTime      time.Time
}

// EventLog is the part of the event bus (events.Bus) status reads when Ray has no record
// of a deliberation, and writes the terminal event of one Ray lost.
type EventLog interface {
	Stored(ctx context.Context, id string) ([]events.Stored, error)
	Publish(ctx context.Context, ev events.Event) error
}

// Service answers status questions.
type Service struct {
	jobs     Jobs
	finished *cache
	// Events, when set (ENABLE_NATS), tells an accepted deliberation whose Ray job record
	// is gone apart from one that never existed.
	Events EventLog
	Logger *slog.Logger
}

// NewService returns a service that remembers up to cacheSize finished deliberations
// (finished jobs never change, so their reports never go stale).
func NewService(jobs Jobs, cacheSize int) *Service {
	return &Service{jobs: jobs, finished: newCache(cacheSize)}
}

// Status reports deliberation id. An id Ray does not know, a job this system did not
// submit, or an id it could never have minted (the original's ids, any characters) is
// reported with status not_found (not an error), as the original did; the last kind never
// reaches Ray or NATS. Errors: ErrInvalid for an empty id or one over
// domain.MaxLookupIDBytes, ErrUnavailable/ErrDeadline when Ray cannot answer.
func (s *Service) Status(ctx context.Context, id string) (Report, error) {
	ours, err := domain.LookupDeliberationID(id)
	if err != nil {
		return Report{}, err
	}
	if !ours {
		return Report{DeliberationID: id, Status: domain.StatusNotFound}, nil
	}
	if rep, ok := s.finished.get(id); ok {
		return rep, nil
	}
	job, err := s.jobs.Job(ctx, id)
	if errors.Is(err, domain.ErrNotFound) {
		return s.fromEvents(ctx, id)
	}
	if err != nil {
		return Report{}, fmt.Errorf("status: %s: %w", id, err)
	}
	meta, ours := domain.ParseJobMeta(job.Metadata)
	if !ours {
		return Report{DeliberationID: id, Status: domain.StatusNotFound}, nil
	}
	rep := Report{
		DeliberationID: id,
		Status:         ray.DeliberationStatus(job.Status),
		Meta:           meta,
		StartTime:      job.StartTime,
		EndTime:        job.EndTime,
	}
	if !job.Status.Terminal() {
		return rep, nil
	}
	logs, err := s.jobs.Logs(ctx, id)
	if err != nil {
		return Report{}, fmt.Errorf("status: logs of %s: %w", id, err)
	}
	c := ray.Conclude(job, logs)
	rep.Status, rep.Outcome, rep.ErrorMessage, rep.ErrorType = c.Status, c.Outcome, c.ErrorMessage, c.ErrorType
	s.finished.put(id, rep)
	return rep, nil
}

// fromEvents answers for a deliberation Ray has no record of. Without events, or with no
// submitted event stored, it never existed here: not_found. With a terminal event, that
// event is the answer (Ray forgot a finished job). With only a submitted event, this
// system accepted it and Ray lost it: it ends failed, "lost by the cluster", and its
// terminal event is published so watchers and consumers learn it too.
//
// The submitted event is stored only after Ray accepted the job, so a 404 read after it is
// a loss, not a submission still in flight. NATS being unreachable leaves the answer at
// not_found (the original's answer) and is logged.
func (s *Service) fromEvents(ctx context.Context, id string) (Report, error) {
	notFound := Report{DeliberationID: id, Status: domain.StatusNotFound}
	if s.Events == nil {
		return notFound, nil
	}
	h, err := s.history(ctx, id)
	if err != nil || !h.Submitted {
		return notFound, nil
	}
	if h.Terminal == nil {
		ev, err := events.LostEvent(events.SourceStatus, h.Meta)
		if err == nil {
			err = s.Events.Publish(ctx, ev)
		}
		if err != nil {
			s.logger().Warn("the terminal event of a lost deliberation was not published; the reconciler will",
				"deliberation_id", id, "error", err.Error())
			return Report{DeliberationID: id, Status: domain.StatusFailed, Meta: h.Meta,
				ErrorMessage: domain.LostMessage, ErrorType: domain.ErrorTypeLost, StartTime: h.SubmittedAt}, nil
		}
		s.logger().Warn("Ray has no record of an accepted deliberation; it ends failed, lost by the cluster",
			"deliberation_id", id)
		// Read back what is stored: a terminal event published concurrently (the
		// reconciler, a late payload) wins over ours, and the reply must agree with it.
		if h, err = s.history(ctx, id); err != nil || h.Terminal == nil {
			return Report{}, fmt.Errorf("status: %s: reading back its terminal event: %w", id, errOr(err))
		}
	}
	t := h.Terminal
	rep := Report{DeliberationID: id, Status: domain.Status(t.Status), Meta: h.Meta, Outcome: h.Outcome(),
		ErrorMessage: t.Error, ErrorType: t.ErrorType, StartTime: h.SubmittedAt, EndTime: h.EndedAt}
	s.finished.put(id, rep)
	return rep, nil
}

func (s *Service) history(ctx context.Context, id string) (events.History, error) {
	stored, err := s.Events.Stored(ctx, id)
	if err != nil {
		s.logger().Warn("cannot read stored events; answering from Ray alone", "deliberation_id", id, "error", err.Error())
		return events.History{}, err
	}
	return events.Summarize(stored), nil
}

func errOr(err error) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("no terminal event stored: %w", domain.ErrUnavailable)
}

func (s *Service) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// cache is a small bounded map with first-in-first-out eviction: finished deliberations
// are read a few times just after they end, then rarely.
type cache struct {
	mu    sync.Mutex
	max   int
	items map[string]Report
	order []string
}

func newCache(max int) *cache {
	if max <= 0 {
		max = 1024
	}
	return &cache{max: max, items: make(map[string]Report, max)}
}

func (c *cache) get(id string) (Report, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.items[id]
	return r, ok
}

func (c *cache) put(id string, r Report) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[id]; ok {
		return
	}
	if len(c.order) >= c.max {
		delete(c.items, c.order[0])
		c.order = c.order[1:]
	}
	c.items[id] = r
	c.order = append(c.order, id)
}
