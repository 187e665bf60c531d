package list

import (
	"cmp"
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

// ReconcileJobs is the part of the Ray Jobs API the reconciler needs.
type ReconcileJobs interface {
	Jobs(ctx context.Context) ([]ray.JobDetails, error)
	Job(ctx context.Context, id string) (ray.JobDetails, error)
	Logs(ctx context.Context, id string) (string, error)
}

// Bus is the part of the event bus the reconciler needs (events.Bus). Errors wrap
// ErrUnavailable when NATS is down.
type Bus interface {
	Publish(ctx context.Context, ev events.Event) error
	Stored(ctx context.Context, id string) ([]events.Stored, error)
	SubmittedSince(ctx context.Context, since time.Time, limit int) ([]events.Stored, error)
}

// maxRunErrors is how many failed steps end a run early.
const maxRunErrors = 5

// lostScanLimit bounds how many submitted events one run reads while looking for
// deliberations Ray lost.
const lostScanLimit = 20000

// Reconciler makes NATS agree with Ray. A driver killed by Ray, by the OOM killer or with
// its node cannot publish its own end, and NATS may have been down when execute or the
// payload published: each run compares this system's Ray jobs with the events stored and
// publishes whatever is missing, with the same ids the original publisher would have used,
// so nothing is ever stored twice and every deliberation gets exactly one terminal event.
type Reconciler struct {
	Jobs   ReconcileJobs
	Bus    Bus
	Logger *slog.Logger
	// Lookback bounds which finished jobs are examined (by end time), so a run's cost does
	// not grow with the cluster's whole history.
	Lookback time.Duration
	Now      func() time.Time

	mu   sync.Mutex
	done map[string]bool // deliberations whose terminal event is known to be stored
}

// ReconcileReport says what one run did.
type ReconcileReport struct {
	Examined  int
	Published int
	// Lost counts accepted deliberations Ray had no record of, ended by this run.
	Lost int
}

// Run reconciles once. It returns the first error that stopped it (Ray or NATS down),
// after doing what it could.
func (r *Reconciler) Run(ctx context.Context) (ReconcileReport, error) {
	var rep ReconcileReport
	jobs, err := r.Jobs.Jobs(ctx)
	if err != nil {
		return rep, fmt.Errorf("reconcile: %w", err)
	}
	now := time.Now()
	if r.Now != nil {
		now = r.Now()
	}
	var firstErr error
	errs := 0
	inRay := make(map[string]bool, len(jobs))
	for _, job := range jobs {
		meta, ours := domain.ParseJobMeta(job.Metadata)
		if !ours || job.SubmissionID == "" {
			continue
		}
		inRay[job.SubmissionID] = true
		if r.isDone(job.SubmissionID) {
			continue
		}
		if meta.DeliberationID == "" {
			meta.DeliberationID = job.SubmissionID
		}
		if job.Status.Terminal() && r.Lookback > 0 && !job.EndTime.IsZero() && now.Sub(job.EndTime) > r.Lookback {
			continue
		}
		rep.Examined++
		n, err := r.one(ctx, job, meta)
		rep.Published += n
		if err != nil {
			// One job Ray cannot answer about (its logs, say) must not starve the rest, nor
			// the look for lost deliberations; an ended run, or Ray or NATS gone (errors
			// piling up), stops it.
			firstErr, errs = cmp.Or(firstErr, err), errs+1
			if ctx.Err() != nil || errs >= maxRunErrors {
				return rep, firstErr
			}
		}
	}
	n, err := r.lost(ctx, inRay, now)
	rep.Lost, rep.Published = n, rep.Published+n
	return rep, cmp.Or(firstErr, err)
}

// lost ends the deliberations this system accepted (a submitted event within Lookback)
// that have no terminal event and that Ray has no record of: a head restarted without GCS
// fault tolerance forgets every job, and no driver is left to report. Each gets the failed
// "lost by the cluster" terminal event. inRay holds the ids in the listing Run read first;
// an id missing from it is confirmed with a GET, because a submission accepted after the
// listing has a submitted event but was not listed.
func (r *Reconciler) lost(ctx context.Context, inRay map[string]bool, now time.Time) (int, error) {
	if r.Lookback <= 0 {
		return 0, nil
	}
	subs, err := r.Bus.SubmittedSince(ctx, now.Add(-r.Lookback), lostScanLimit)
	if err != nil {
		return 0, fmt.Errorf("reconcile: %w", err)
	}
	n := 0
	for _, st := range subs {
		id := st.Subject
		if id == "" || inRay[id] || r.isDone(id) {
			continue
		}
		switch _, err := r.Jobs.Job(ctx, id); {
		case err == nil:
			continue
		case !errors.Is(err, domain.ErrNotFound):
			return n, fmt.Errorf("reconcile %s: %w", id, err)
		}
		stored, err := r.Bus.Stored(ctx, id)
		if err != nil {
			return n, fmt.Errorf("reconcile %s: %w", id, err)
		}
		h := events.Summarize(stored)
		if h.Terminal == nil {
			ev, err := events.LostEvent(events.SourceReconciler, h.Meta)
			if err != nil {
				return n, err
			}
			if err := r.Bus.Publish(ctx, ev); err != nil {
				return n, fmt.Errorf("reconcile %s: %w", id, err)
			}
			n++
			r.Logger.Warn("Ray has no record of an accepted deliberation; published its end: lost by the cluster",
				"deliberation_id", id)
		}
		r.markDone(id)
	}
	return n, nil
}

func (r *Reconciler) isDone(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done[id]
}

func (r *Reconciler) markDone(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done == nil || len(r.done) > 100000 {
		r.done = map[string]bool{} // bounded: forgetting only costs one more look-up
	}
	r.done[id] = true
}

// one reconciles one deliberation and returns how many events it published.
func (r *Reconciler) one(ctx context.Context, job ray.JobDetails, meta domain.JobMeta) (int, error) {
	id := meta.DeliberationID
	// Every stored event is read, not just the terminal one: a payload that published its
	// end can still have come after an execute that could not announce the start.
	stored, err := r.Bus.Stored(ctx, id)
	if err != nil {
		return 0, fmt.Errorf("reconcile %s: %w", id, err)
	}
	have := make(map[string]bool, len(stored))
	for _, st := range stored {
		have[st.ID] = true
	}
	src := events.SourceReconciler
	want := []func() (events.Event, error){
		func() (events.Event, error) { return events.SubmittedEvent(src, meta) },
	}
	if job.Status.Terminal() {
		logs, err := r.Jobs.Logs(ctx, id)
		if err != nil {
			return 0, fmt.Errorf("reconcile %s: logs: %w", id, err)
		}
		c := ray.Conclude(job, logs)
		if c.Outcome != nil { // the driver ran and reported: it had started, and its agents ended
			want = append(want, func() (events.Event, error) { return events.StartedEvent(src, meta) })
			for i, a := range c.Outcome.Agents {
				want = append(want, func() (events.Event, error) { return events.AgentEvent(src, meta, i, a) })
			}
		}
		if job.Status == ray.StatusFailed && c.Outcome == nil && c.ErrorMessage == "" {
			c.ErrorMessage = "the Ray job failed before the deliberation reported a result"
		}
		want = append(want, func() (events.Event, error) {
			return events.TerminalEvent(src, meta, c.Status, c.Outcome, c.ErrorMessage, c.ErrorType)
		})
	}
	published := 0
	for _, build := range want {
		ev, err := build()
		if err != nil {
			return published, err
		}
		if have[ev.ID] {
			continue
		}
		if err := r.Bus.Publish(ctx, ev); err != nil {
			return published, fmt.Errorf("reconcile %s: %w", id, err)
		}
		published++
		r.Logger.Info("reconciler published a missing event", "deliberation_id", id, "event", string(ev.Kind()))
	}
	if job.Status.Terminal() {
		r.markDone(id)
	}
	return published, nil
}

// Every runs the reconciler every interval until ctx ends (`make run` uses it; on Knative a
// PingSource sends the events instead).
func (r *Reconciler) Every(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rctx, cancel := context.WithTimeout(ctx, interval)
			rep, err := r.Run(rctx)
			cancel()
			if err != nil {
				r.Logger.Warn("reconcile run stopped early", "error", err.Error(), "published", rep.Published)
			}
		}
	}
}
