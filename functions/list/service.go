// Package list is the function that lists this system's active deliberations, read from
// Ray's job table (so every replica, after any restart, sees the same list).
package list

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/ray"
)

// Jobs is the part of the Ray Jobs API list needs. Errors wrap ErrUnavailable/ErrDeadline
// when Ray cannot answer.
type Jobs interface {
	Jobs(ctx context.Context) ([]ray.JobDetails, error)
}

// Active is one pending or running deliberation.
type Active struct {
	Meta      domain.JobMeta
	Status    ray.JobStatus
	StartTime time.Time
	Message   string
}

// Service answers list questions.
type Service struct {
	Jobs Jobs
	Now  func() time.Time
}

// Active returns this system's pending and running deliberations, oldest first. Jobs other
// systems submitted to the same cluster are left out.
func (s *Service) Active(ctx context.Context) ([]Active, error) {
	jobs, err := s.Jobs.Jobs(ctx)
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	var out []Active
	for _, j := range jobs {
		meta, ours := domain.ParseJobMeta(j.Metadata)
		if !ours || j.Status.Terminal() || j.SubmissionID == "" {
			continue
		}
		if meta.DeliberationID == "" {
			meta.DeliberationID = j.SubmissionID
		}
		out = append(out, Active{Meta: meta, Status: j.Status, StartTime: j.StartTime, Message: j.Message})
	}
	sort.Slice(out, func(a, b int) bool {
		if !out[a].StartTime.Equal(out[b].StartTime) {
			return out[a].StartTime.Before(out[b].StartTime)
		}
		return out[a].Meta.DeliberationID < out[b].Meta.DeliberationID
	})
	return out, nil
}

// Runtime renders how long a deliberation has been running as the original did: "<m>m <s>s".
func Runtime(start, now time.Time) string {
	if start.IsZero() || now.Before(start) {
		return "0m 0s"
	}
	d := now.Sub(start)
	return fmt.Sprintf("%dm %ds", int(d/time.Minute), int(d%time.Minute/time.Second))
}

// Stats counts this system's deliberations by their Ray job status. Ray is the record, so
// the counts survive any restart of any replica and each job is counted exactly once.
type Stats struct {
	Total, Pending, Running, Completed, Failed, Cancelled int64
	// AverageExecutionMS is the mean wall time of finished (completed or failed) jobs.
	AverageExecutionMS float64
}

// Stats reads every job of this system from Ray. Errors wrap ErrUnavailable/ErrDeadline.
func (s *Service) Stats(ctx context.Context) (Stats, error) {
	jobs, err := s.Jobs.Jobs(ctx)
	if err != nil {
		return Stats{}, fmt.Errorf("list: stats: %w", err)
	}
	var st Stats
	var finished int64
	var totalMS float64
	for _, j := range jobs {
		if _, ours := domain.ParseJobMeta(j.Metadata); !ours {
			continue
		}
		st.Total++
		switch j.Status {
		case ray.StatusPending:
			st.Pending++
		case ray.StatusRunning:
			st.Running++
		case ray.StatusSucceeded:
			st.Completed++
		case ray.StatusFailed:
			st.Failed++
		case ray.StatusStopped:
			st.Cancelled++
		}
		if (j.Status == ray.StatusSucceeded || j.Status == ray.StatusFailed) &&
			!j.StartTime.IsZero() && j.EndTime.After(j.StartTime) {
			finished++
			totalMS += float64(j.EndTime.Sub(j.StartTime).Milliseconds())
		}
	}
	if finished > 0 {
		st.AverageExecutionMS = totalMS / float64(finished)
	}
	return st, nil
}
