// Package status is the function that reports a deliberation's state and results: one
// read of its record in NATS (specs/records.md), so a restarted or scaled-out replica
// answers exactly as the one before it, and Ray is never asked.
package status

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/records"
)

// Records is the part of the records store status reads (records.Store). Errors wrap
// ErrNotFound for an id with no record, ErrUnavailable/ErrDeadline when NATS cannot answer.
type Records interface {
	Get(ctx context.Context, id string) (domain.Record, uint64, error)
}

// Report is what status knows about one deliberation.
type Report struct {
	DeliberationID string
	Status         domain.Status
	Meta           domain.JobMeta
	// Owner is the caller whose deliberation it is ("" for everyone's); not sent.
	Owner string
	// Outcome is the executor's result, present once the agents ran.
	Outcome      *domain.Outcome
	ErrorMessage string
	ErrorType    string
	StartTime    time.Time
	EndTime      time.Time
}

// Service answers status questions.
type Service struct {
	records  Records
	finished *cache
	expiry   *Expiry
	lookups  metric.Int64Counter // rex.status.cache.lookups
}

// Expiry lets a status read end a deliberation whose deadline has passed (issue 16: the
// gateway keeps the deadline whatever happened to the cluster), through the record's
// compare-and-set, so a status replica, the reconciler and the executor never both end it.
type Expiry struct {
	Store  records.Expirer
	Events records.Publisher // the terminal event's bus; nil skips it (the reconciler repeats it)
	Logger *slog.Logger
	Now    func() time.Time // time.Now when nil
}

// WithExpiry makes reads of expired deliberations end them (see Expiry).
func (s *Service) WithExpiry(e *Expiry) *Service {
	s.expiry = e
	return s
}

// NewService returns a service that remembers up to cacheSize finished deliberations,
// holding at most cacheBytes of them (finished records never change, so their reports
// never go stale). Zero takes the defaults, 256 and 256 KiB.
func NewService(records Records, cacheSize, cacheBytes int) *Service {
	return &Service{records: records, finished: newCache(cacheSize, cacheBytes), lookups: newLookupCounter()}
}

// Status reports deliberation id. An id with no record (never accepted, or its record
// expired after the retention), or an id this system could never have minted (the
// original's ids, any characters) is reported with status not_found (not an error), as
// the original did; the last kind never reaches NATS. Errors: ErrInvalid for an empty id
// or one over domain.MaxLookupIDBytes, ErrUnavailable/ErrDeadline when NATS cannot answer.
//
// A deliberation caller may not see (domain.Caller.Sees) is reported as not_found, exactly
// as an id with no record, and a read of it changes nothing.
func (s *Service) Status(ctx context.Context, id string, caller domain.Caller) (Report, error) {
	ours, err := domain.LookupDeliberationID(id)
	if err != nil {
		return Report{}, err
	}
	notFound := Report{DeliberationID: id, Status: domain.StatusNotFound}
	if !ours {
		return notFound, nil
	}
	if rep, ok := s.finished.get(id); ok {
		s.lookups.Add(ctx, 1, lookupHit)
		if !caller.Sees(rep.Owner) {
			return notFound, nil
		}
		return rep, nil
	}
	rec, _, err := s.records.Get(ctx, id)
	if errors.Is(err, domain.ErrNotFound) {
		return notFound, nil
	}
	if err != nil {
		return Report{}, fmt.Errorf("status: %s: %w", id, err)
	}
	if !caller.Sees(rec.Owner) {
		return notFound, nil
	}
	if s.expiry != nil {
		now := time.Now
		if s.expiry.Now != nil {
			now = s.expiry.Now
		}
		if ended, _, err := records.EndExpired(ctx, s.expiry.Store, s.expiry.Events, rec, now(), events.SourceStatus,
			s.expiry.Logger); err == nil {
			rec = ended
		} else {
			// Report what the record says; the next read or the reconciler ends it.
			s.expiry.Logger.Warn("could not end an expired deliberation", "deliberation_id", id, "error", err.Error())
		}
	}
	rep := FromRecord(rec)
	if rec.Terminal() {
		s.lookups.Add(ctx, 1, lookupMiss)
		s.finished.put(id, rep)
	} else {
		s.lookups.Add(ctx, 1, lookupActive)
	}
	return rep, nil
}

// FromRecord renders a record as a report.
func FromRecord(rec domain.Record) Report {
	rep := Report{
		DeliberationID: rec.ID, Status: rec.State, Meta: rec.Meta(), Owner: rec.Owner, Outcome: rec.Outcome,
		ErrorMessage: rec.Error, ErrorType: rec.ErrorType,
		StartTime: domain.ParseTime(rec.CreatedAt), EndTime: domain.ParseTime(rec.EndedAt),
	}
	if rec.State == domain.StatusCancelled && rep.ErrorMessage == "" {
		rep.ErrorMessage = rec.Reason
	}
	return rep
}

// The cache's default bounds (RESULT_CACHE_SIZE, RESULT_CACHE_BYTES). The cache serves the
// reads of a deliberation just after it ends (a poller's last reads, a person's look at
// the outcome): 256 of them per replica is minutes of completions at this system's rates,
// and 256 KiB keeps a replica's memory flat however long its history (BENCHMARKS.md
// "Records at scale": 1 MiB cost the replica 13-19% more memory with 100,000 records).
const (
	defaultCacheSize  = 256
	defaultCacheBytes = 256 << 10
)

// cache is a small bounded map with first-in-first-out eviction: finished deliberations
// are read a few times just after they end, then rarely. It is bounded by count and by
// bytes: a report carries its agents' proposals, whose size callers' prompts decide.
type cache struct {
	mu              sync.Mutex
	maxItems, bytes int
	maxBytes        int
	items           map[string]cached
	order           []string
}

type cached struct {
	rep  Report
	size int
}

func newCache(maxItems, maxBytes int) *cache {
	if maxItems <= 0 {
		maxItems = defaultCacheSize
	}
	if maxBytes <= 0 {
		maxBytes = defaultCacheBytes
	}
	return &cache{maxItems: maxItems, maxBytes: maxBytes, items: make(map[string]cached)}
}

func (c *cache) get(id string) (Report, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.items[id]
	return r.rep, ok
}

func (c *cache) put(id string, r Report) {
	size := reportSize(r)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[id]; ok || size > c.maxBytes {
		return
	}
	for len(c.order) > 0 && (len(c.order) >= c.maxItems || c.bytes+size > c.maxBytes) {
		c.bytes -= c.items[c.order[0]].size
		delete(c.items, c.order[0])
		c.order = c.order[1:]
	}
	c.items[id] = cached{rep: r, size: size}
	c.bytes += size
	c.order = append(c.order, id)
}

// reportSize estimates the memory a cached report holds: its text plus a fixed share for
// the struct, the map entry and each agent's fixed fields.
func reportSize(r Report) int {
	m := r.Meta
	n := 512 + 2*len(r.DeliberationID) + len(r.Owner) + len(r.ErrorMessage) + len(r.ErrorType) + len(m.TaskID) + len(m.Role) +
		len(m.StoryID) + len(m.PlanID) + len(m.TaskType) + len(m.RequestHash) + len(m.Traceparent) + len(m.Kind)
	if o := r.Outcome; o != nil {
		n += 256 + len(o.Error) + len(o.TaskID)
		for _, a := range o.Agents {
			n += 256 + len(a.AgentID) + len(a.Role) + len(a.Model) + len(a.Proposal) + len(a.Reasoning) + len(a.Error) + len(a.ErrorType)
		}
	}
	return n
}
