// Package status is the function that reports a deliberation's state and results. It reads
// everything from Ray (the job record and the payload's result line in the job log), so a
// restarted or scaled-out replica answers exactly as the one before it.
package status

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
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

// Service answers status questions.
type Service struct {
	jobs     Jobs
	finished *cache
}

// NewService returns a service that remembers up to cacheSize finished deliberations
// (finished jobs never change, so their reports never go stale).
func NewService(jobs Jobs, cacheSize int) *Service {
	return &Service{jobs: jobs, finished: newCache(cacheSize)}
}

// Status reports deliberation id. An id Ray does not know, or a job this system did not
// submit, is reported with status not_found (not an error), as the original did. Errors:
// ErrInvalid for a malformed id, ErrUnavailable/ErrDeadline when Ray cannot answer.
func (s *Service) Status(ctx context.Context, id string) (Report, error) {
	if err := domain.CheckDeliberationID(id); err != nil {
		return Report{}, err
	}
	if rep, ok := s.finished.get(id); ok {
		return rep, nil
	}
	job, err := s.jobs.Job(ctx, id)
	if errors.Is(err, domain.ErrNotFound) {
		return Report{DeliberationID: id, Status: domain.StatusNotFound}, nil
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
