package list

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
)

// memBus is an in-memory stand-in for the stream, keyed and de-duplicated by event id as
// JetStream's Nats-Msg-Id is (the real bus is exercised in shared/events and the e2e tests).
type memBus struct{ stored map[string][]events.Stored }

func (m *memBus) Publish(_ context.Context, ev events.Event) error {
	for _, s := range m.stored[ev.Subject] {
		if s.ID == ev.ID {
			return nil
		}
	}
	m.stored[ev.Subject] = append(m.stored[ev.Subject], events.Stored{Event: ev})
	return nil
}

func (m *memBus) Stored(_ context.Context, id string) ([]events.Stored, error) {
	return m.stored[id], nil
}

func (m *memBus) SubmittedSince(_ context.Context, since time.Time, limit int) ([]events.Stored, error) {
	var out []events.Stored
	for _, evs := range m.stored {
		for _, e := range evs {
			if e.Kind() == events.Submitted && !e.Time.Before(since) && len(out) < limit {
				out = append(out, e)
			}
		}
	}
	return out, nil
}

type recJobs struct {
	jobs []ray.JobDetails
	logs map[string]string
	// unlisted are found by Job but missing from Jobs: submitted after the listing.
	unlisted []ray.JobDetails
	// logsErr fails Logs for these jobs.
	logsErr map[string]error
}

func (r recJobs) Jobs(context.Context) ([]ray.JobDetails, error) { return r.jobs, nil }
func (r recJobs) Logs(_ context.Context, id string) (string, error) {
	return r.logs[id], r.logsErr[id]
}
func (r recJobs) Job(_ context.Context, id string) (ray.JobDetails, error) {
	for _, j := range append(r.jobs, r.unlisted...) {
		if j.SubmissionID == id {
			return j, nil
		}
	}
	return ray.JobDetails{}, fmt.Errorf("job %s: %w", id, domain.ErrNotFound)
}

func kindsOf(evs []events.Stored) string {
	var ks []string
	for _, e := range evs {
		ks = append(ks, string(e.Kind()))
	}
	sort.Strings(ks)
	return strings.Join(ks, ",")
}

func TestReconcilerPublishesWhatIsMissingOnce(t *testing.T) {
	now := time.Unix(1800000000, 0)
	job := func(id string, st ray.JobStatus, end time.Time) ray.JobDetails {
		return ray.JobDetails{SubmissionID: id, Status: st, EndTime: end,
			Metadata: domain.JobMeta{DeliberationID: id, TaskID: "t-" + id, NumAgents: 2}.Map()}
	}
	result := ray.ResultMarker + `{"status":"completed","completed_agents":1,"failed_agents":1,"agents":[` +
		`{"agent_id":"a","status":"completed","proposal":"p"},{"agent_id":"b","status":"failed","error":"boom"}]}` + "\n"
	jobs := recJobs{
		jobs: []ray.JobDetails{
			job("done", ray.StatusSucceeded, now.Add(-time.Minute)),
			job("killed", ray.StatusFailed, now.Add(-time.Minute)),
			job("stopped", ray.StatusStopped, now.Add(-time.Minute)),
			job("running", ray.StatusRunning, time.Time{}),
			job("ancient", ray.StatusSucceeded, now.Add(-48*time.Hour)),
			{SubmissionID: "foreign", Status: ray.StatusFailed, Metadata: map[string]string{"x": "y"}},
		},
		logs: map[string]string{"done": "noise\n" + result, "killed": "Killed\n"},
	}
	bus := &memBus{stored: map[string][]events.Stored{}}
	// The payload had published its end of "done", but execute never announced the start.
	ev, _ := events.TerminalEvent(events.SourcePayload, domain.JobMeta{DeliberationID: "done"}, domain.StatusCompleted, nil, "", "")
	_ = bus.Publish(context.Background(), ev)
	r := &Reconciler{Jobs: jobs, Bus: bus, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Lookback: 24 * time.Hour, Now: func() time.Time { return now }}

	rep, err := r.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"done":    "agent_completed,agent_failed,completed,started,submitted",
		"killed":  "failed,submitted",
		"stopped": "cancelled,submitted",
		"running": "submitted",
		"ancient": "",
		"foreign": "",
	}
	for id, k := range want {
		if got := kindsOf(bus.stored[id]); got != k {
			t.Errorf("%s: got %q, want %q", id, got, k)
		}
	}
	if rep.Published != 4+2+2+1 {
		t.Errorf("got %d published, want 9", rep.Published)
	}
	for i := 0; i < 3; i++ {
		again, err := r.Run(context.Background())
		if err != nil || again.Published != 0 {
			t.Fatalf("run %d: published %d (%v), want nothing more", i+2, again.Published, err)
		}
	}
	// A fresh replica (no memory of what it did) publishes nothing twice either.
	fresh := &Reconciler{Jobs: jobs, Bus: bus, Logger: r.Logger, Lookback: 24 * time.Hour, Now: r.Now}
	if again, _ := fresh.Run(context.Background()); again.Published != 0 {
		t.Errorf("a fresh reconciler published %d, want 0", again.Published)
	}
	var failed events.TerminalData
	if err := jsonUnmarshal(bus.stored["killed"], events.Failed, &failed); err != nil || failed.Error == "" {
		t.Errorf("got failed data %+v (%v), want an error message", failed, err)
	}
}

func jsonUnmarshal(evs []events.Stored, k events.Kind, into any) error {
	for _, e := range evs {
		if e.Kind() == k {
			return json.Unmarshal(e.Data, into)
		}
	}
	return io.EOF
}

func TestReconcilerEndsDeliberationsRayLost(t *testing.T) {
	ctx := context.Background()
	meta := func(id string) domain.JobMeta {
		return domain.JobMeta{DeliberationID: id, TaskID: "t-" + id, NumAgents: 3, Traceparent: "00-" + id}
	}
	running := ray.JobDetails{SubmissionID: "alive", Status: ray.StatusRunning, Metadata: meta("alive").Map()}
	late := ray.JobDetails{SubmissionID: "late", Status: ray.StatusPending, Metadata: meta("late").Map()}
	jobs := recJobs{jobs: []ray.JobDetails{running}, unlisted: []ray.JobDetails{late}}
	bus := &memBus{stored: map[string][]events.Stored{}}
	for _, id := range []string{"lost", "finished", "alive", "late"} {
		ev, _ := events.SubmittedEvent(events.SourceExecute, meta(id))
		_ = bus.Publish(ctx, ev)
	}
	// Ray forgot "finished" too, but its end was already stored: nothing to add.
	ev, _ := events.TerminalEvent(events.SourcePayload, meta("finished"), domain.StatusCompleted, nil, "", "")
	_ = bus.Publish(ctx, ev)
	r := &Reconciler{Jobs: jobs, Bus: bus, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Lookback: time.Hour}

	rep, err := r.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Lost != 1 {
		t.Errorf("got %d lost, want 1", rep.Lost)
	}
	for id, want := range map[string]string{"lost": "failed,submitted", "finished": "completed,submitted",
		"alive": "submitted", "late": "submitted"} {
		if got := kindsOf(bus.stored[id]); got != want {
			t.Errorf("%s: got %q, want %q", id, got, want)
		}
	}
	var d events.TerminalData
	if err := jsonUnmarshal(bus.stored["lost"], events.Failed, &d); err != nil {
		t.Fatal(err)
	}
	if d.ErrorType != domain.ErrorTypeLost || !strings.Contains(d.Error, "lost by the cluster") || d.TaskID != "t-lost" || d.NumAgents != 3 {
		t.Errorf("got lost terminal data %+v", d)
	}
	if got := bus.stored["lost"][1].Traceparent; got != "00-lost" {
		t.Errorf("lost event traceparent %q, want the submission's", got)
	}
	fresh := &Reconciler{Jobs: jobs, Bus: bus, Logger: r.Logger, Lookback: time.Hour}
	if again, err := fresh.Run(ctx); err != nil || again.Published != 0 {
		t.Errorf("second run published %d (%v), want 0", again.Published, err)
	}
	// Outside the lookback nothing is examined.
	old := &Reconciler{Jobs: jobs, Bus: bus, Logger: r.Logger, Lookback: time.Hour,
		Now: func() time.Time { return time.Now().Add(3 * time.Hour) }}
	delete(bus.stored, "lost")
	ev, _ = events.SubmittedEvent(events.SourceExecute, meta("lost"))
	_ = bus.Publish(ctx, ev)
	if rep, err := old.Run(ctx); err != nil || rep.Lost != 0 {
		t.Errorf("a run 3 h later ended %d (%v), want 0: the submission is outside the lookback", rep.Lost, err)
	}
}

func TestOneJobRayCannotAnswerAboutDoesNotStarveTheRest(t *testing.T) {
	ctx := context.Background()
	job := func(id string) ray.JobDetails {
		return ray.JobDetails{SubmissionID: id, Status: ray.StatusFailed, EndTime: time.Now(),
			Metadata: domain.JobMeta{DeliberationID: id, TaskID: "t-" + id}.Map()}
	}
	jobs := recJobs{jobs: []ray.JobDetails{job("sick"), job("fine")},
		logsErr: map[string]error{"sick": fmt.Errorf("ray: logs: %w", domain.ErrUnavailable)}}
	bus := &memBus{stored: map[string][]events.Stored{}}
	lost, _ := events.SubmittedEvent(events.SourceExecute, domain.JobMeta{DeliberationID: "gone", TaskID: "t-gone"})
	_ = bus.Publish(ctx, lost)
	r := &Reconciler{Jobs: jobs, Bus: bus, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Lookback: time.Hour}
	rep, err := r.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "sick") {
		t.Errorf("got %v, want the sick job's error reported", err)
	}
	if got := kindsOf(bus.stored["fine"]); got != "failed,submitted" {
		t.Errorf("fine: got %q, want its events published despite the sick job", got)
	}
	if rep.Lost != 1 || kindsOf(bus.stored["gone"]) != "failed,submitted" {
		t.Errorf("lost pass: %d lost, gone has %q", rep.Lost, kindsOf(bus.stored["gone"]))
	}
}
