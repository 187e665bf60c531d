// Package list is the function that lists this system's active deliberations (the active
// index of the records store: its cost grows with the active ones, never with history),
// reports statistics (counters, O(1)) and the executor's health, and runs the reconciler
// tick that keeps the executor deployed.
package list

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/executor"
	"github.com/fleet-ai/ray-executor/shared/records"
)

// Store is the part of the records store list reads (records.Store). Errors wrap
// ErrUnavailable/ErrDeadline when NATS cannot answer.
type Store interface {
	Active(ctx context.Context) ([]domain.ActiveEntry, []string, error)
	CountersOf(ctx context.Context, owner string) (map[string]int64, error)
	Queue(ctx context.Context) (records.Queue, error)
	Heartbeat(ctx context.Context) (records.Heartbeat, bool, error)
	Deploy(ctx context.Context) (records.Deploy, uint64, error)
	PurgeDeletes(ctx context.Context, age time.Duration) error
	// For the reconciler's repair of the active index and its deadline enforcement:
	Get(ctx context.Context, id string) (domain.Record, uint64, error)
	PutActive(ctx context.Context, e domain.ActiveEntry) error
	records.Expirer
}

// Active is one pending or running deliberation.
type Active struct {
	Meta      domain.JobMeta
	Status    domain.Status
	StartTime time.Time
	Message   string
}

// Service answers list questions.
type Service struct {
	Store Store
	// RayReady reports whether Ray answers (ray.Client.Ready); nil leaves Ray out of the
	// health report.
	RayReady func(context.Context) error
	Logger   *slog.Logger
	Now      func() time.Time
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Active returns this system's pending and running deliberations that caller may see
// (its own, or all for an admin), oldest first.
func (s *Service) Active(ctx context.Context, caller domain.Caller) ([]Active, error) {
	entries, bad, err := s.Store.Active(ctx)
	if err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	if len(bad) > 0 && s.Logger != nil {
		s.Logger.Warn("active index entries that do not decode were left out", "keys", len(bad))
	}
	out := make([]Active, 0, len(entries))
	for _, e := range entries {
		if !caller.Sees(e.Owner) {
			continue
		}
		out = append(out, Active{
			Meta:      domain.JobMeta{DeliberationID: e.ID, Kind: e.Kind, TaskID: e.TaskID, Role: e.Role, NumAgents: e.NumAgents},
			Status:    e.State,
			StartTime: domain.ParseTime(e.CreatedAt),
		})
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

// Stats counts this system's deliberations.
type Stats struct {
	Total, Pending, Running, Completed, Failed, Cancelled int64
	// AverageExecutionMS is the mean run time of finished (completed or failed) ones.
	AverageExecutionMS float64
}

// Stats reads the counters and the active index: its cost does not grow with history.
// An admin or an anonymous caller (access control off) gets the whole system's; any
// other caller only its own: its own lifetime counters (records.OwnerCounter) and its own
// pending and running deliberations, never a figure about others'.
func (s *Service) Stats(ctx context.Context, caller domain.Caller) (Stats, error) {
	entries, _, err := s.Store.Active(ctx)
	if err != nil {
		return Stats{}, fmt.Errorf("list: stats: %w", err)
	}
	own := caller.Name != "" && !caller.Admin
	owner := ""
	if own {
		owner = caller.Name
	}
	c, err := s.Store.CountersOf(ctx, owner)
	if err != nil {
		return Stats{}, fmt.Errorf("list: stats: %w", err)
	}
	st := Stats{Total: c[records.CountSubmitted], Completed: c[records.CountCompleted],
		Failed: c[records.CountFailed], Cancelled: c[records.CountCancelled]}
	for _, e := range entries {
		if own && e.Owner != caller.Name {
			continue
		}
		if e.State == domain.StatusRunning {
			st.Running++
		} else {
			st.Pending++
		}
	}
	if n := st.Completed + st.Failed; n > 0 {
		st.AverageExecutionMS = float64(c[records.CountDurationMS]) / float64(n)
	}
	return st, nil
}

// Component is one line of the health report.
type Component struct {
	Name, Status, Message string
}

// Component statuses.
const (
	Healthy   = "healthy"
	Degraded  = "degraded"
	Unhealthy = "unhealthy"
)

// Health reports Ray and the executor: running replicas, work waiting and how old the
// oldest waiting work is. The executor is degraded when work waits and no executor runs,
// or its driver beats with no replica answering.
func (s *Service) Health(ctx context.Context) []Component {
	var out []Component
	if s.RayReady != nil {
		c := Component{Name: "ray", Status: Healthy, Message: "answers"}
		if err := s.RayReady(ctx); err != nil {
			c.Status, c.Message = Degraded, rayTrouble(err, s.Logger)
		}
		out = append(out, c)
	}
	now := s.now()
	c := Component{Name: "executor"}
	hb, ok, err := s.Store.Heartbeat(ctx)
	q, qerr := s.Store.Queue(ctx)
	switch {
	case err != nil || qerr != nil:
		c.Status, c.Message = Unhealthy, "NATS does not answer: "+fmt.Sprint(firstErr(err, qerr))
	default:
		waiting := fmt.Sprintf("%d waiting", q.Waiting)
		if !q.Oldest.IsZero() {
			waiting += fmt.Sprintf(", the oldest for %s", now.Sub(q.Oldest).Round(time.Second))
		}
		live := ok && hb.Fresh(now)
		switch {
		case live && hb.Replicas == 0 && q.Waiting > 0:
			// A driver beats but none of its replicas answers it: starting, or the driver
			// outlived its Ray cluster (a stopped head, a lost node).
			c.Status = Degraded
			c.Message = fmt.Sprintf("the executor (version %s) has no replica answering and work waits (%s): "+
				"its replicas are starting, or Ray lost them", hb.Version, waiting)
		case live:
			c.Status = Healthy
			c.Message = fmt.Sprintf("version %s: %d replicas (at most %d), %d running, %s", hb.Version, hb.Replicas, hb.MaxReplicas,
				hb.InFlight, waiting)
		case q.Waiting > 0:
			c.Status = Degraded
			c.Message = "no executor runs and work waits (" + waiting + "); it is being redeployed" + s.crashes(ctx)
		default:
			c.Status = Degraded
			c.Message = "no executor runs; it is deployed again when work arrives" + s.crashes(ctx)
		}
	}
	return append(out, c)
}

// crashes says, when the executor keeps ending soon after it starts, how often and where to
// read why (the deployers back off meanwhile: executor.Backoff); "" otherwise.
func (s *Service) crashes(ctx context.Context) string {
	dep, _, err := s.Store.Deploy(ctx)
	if err != nil || dep.Failures == 0 || dep.Previous == "" {
		return ""
	}
	jobs := "the last executor job"
	if dep.Failures > 1 {
		jobs = fmt.Sprintf("the last %d executor jobs", dep.Failures)
	}
	return fmt.Sprintf(", after %s ended soon after starting (`ray job logs %s` says why)", jobs, dep.Previous)
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// Reconciler keeps the system in shape on a timer or a PingSource tick, whichever function
// is scaled to zero: it makes sure the executor runs (resubmitting or rolling it), repairs
// the active index against the records, and drops the delete markers ended deliberations
// leave in it.
type Reconciler struct {
	// Deployer is nil when operators deploy the executor themselves (EXECUTOR_DEPLOY=false).
	Deployer *executor.Deployer
	Store    Store
	// Events receives a terminal event a repair finds missing (natsbus.Bus); nil skips it.
	Events records.Publisher
	Logger *slog.Logger
	// Now is time.Now when nil (tests set it).
	Now func() time.Time

	mu      sync.Mutex
	running *pass // the pass in progress, which concurrent Runs join
}

// pass is one reconcile pass and, once done is closed, its outcome.
type pass struct {
	done chan struct{}
	st   executor.State
	err  error
}

// Run does one pass, or joins the one in progress: ticks and PingSource deliveries that
// arrive together (or a flood of ping events) cost one pass, not one each. Each step runs
// even when another fails; the first error is returned.
func (r *Reconciler) Run(ctx context.Context) (executor.State, error) {
	r.mu.Lock()
	if p := r.running; p != nil {
		r.mu.Unlock()
		select {
		case <-p.done:
			return p.st, p.err
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	p := &pass{done: make(chan struct{})}
	r.running = p
	r.mu.Unlock()
	p.st, p.err = r.runPass(ctx)
	r.mu.Lock()
	r.running = nil
	r.mu.Unlock()
	close(p.done)
	return p.st, p.err
}

func (r *Reconciler) runPass(ctx context.Context) (executor.State, error) {
	var st executor.State
	var err error
	if r.Deployer != nil {
		st, err = r.Deployer.Ensure(ctx)
	}
	if rerr := r.repair(ctx); err == nil {
		err = rerr
	}
	if perr := r.Store.PurgeDeletes(ctx, time.Minute); err == nil {
		err = perr
	}
	return st, err
}

// repair makes the active index agree with the records, whose cost is the active ones: an
// entry whose record has ended (its writer stopped between the record and the index, or a
// late duplicate submit put the entry back) gets the after-terminal steps again (each is
// idempotent: the terminal event, the count, the removal); an entry whose record is gone
// is removed; an entry showing another state than its record is rewritten; a record whose
// deadline has passed is ended (records.EndExpired: failed, deadline_exceeded, its work
// withdrawn), which is how deadlines hold with the executor, Ray and every other function
// gone. One bad entry never stops the pass.
func (r *Reconciler) repair(ctx context.Context) error {
	entries, _, err := r.Store.Active(ctx)
	if err != nil {
		return err
	}
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	var first error
	for _, e := range entries {
		rec, _, err := r.Store.Get(ctx, e.ID)
		switch {
		case errors.Is(err, domain.ErrNotFound):
			err = r.Store.DeleteActive(ctx, e.ID)
		case err != nil:
		case rec.Expired(now()):
			_, _, err = records.EndExpired(ctx, r.Store, r.Events, rec, now(), events.SourceReconciler, r.Logger)
		case rec.Terminal():
			records.AfterTerminal(ctx, r.Store, r.Events, rec, events.SourceReconciler, r.Logger)
		case rec.State != e.State:
			err = r.Store.PutActive(ctx, rec.Active())
		}
		if err != nil && first == nil {
			first = fmt.Errorf("list: repair %s: %w", e.ID, err)
		}
	}
	return first
}

// Every runs the reconciler every interval until ctx ends, logging failed passes.
func (r *Reconciler) Every(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := r.Run(ctx); err != nil && ctx.Err() == nil {
				r.Logger.Warn("reconcile pass failed", "error", err.Error())
			}
		}
	}
}
