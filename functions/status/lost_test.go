package status

import (
	"context"
	"fmt"
	"testing"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// forgetful is a Ray that has no record of anything: a head restarted without GCS fault
// tolerance.
func forgetful() *fakeJobs {
	return &fakeJobs{JobFn: func(_ context.Context, id string) (ray.JobDetails, error) {
		return ray.JobDetails{}, fmt.Errorf("ray: get job %s: %w", id, domain.ErrNotFound)
	}}
}

func TestAcceptedDeliberationRayLostIsReportedAsSuch(t *testing.T) {
	b := testenv.NATS(t)
	ctx := context.Background()
	svc := NewService(forgetful(), 8)
	svc.Events = b

	// Never accepted here: not_found, as the original answered.
	rep, err := svc.Status(ctx, "delib-neverseen")
	if err != nil || rep.Status != domain.StatusNotFound {
		t.Fatalf("unknown id: got %+v, %v; want not_found", rep, err)
	}

	m := domain.JobMeta{DeliberationID: "delib-lost1", TaskID: "t-lost", NumAgents: 3}
	ev, _ := events.SubmittedEvent(events.SourceExecute, m)
	if err := b.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	rep, err = svc.Status(ctx, m.DeliberationID)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != domain.StatusFailed || rep.ErrorType != domain.ErrorTypeLost || rep.ErrorMessage != domain.LostMessage ||
		rep.Meta.TaskID != "t-lost" || rep.Meta.NumAgents != 3 {
		t.Errorf("got %+v, want failed, lost by the cluster, with the submission's task", rep)
	}
	stored, err := b.Stored(ctx, m.DeliberationID)
	if err != nil {
		t.Fatal(err)
	}
	h := events.Summarize(stored)
	if h.Terminal == nil || h.Terminal.ErrorType != domain.ErrorTypeLost || len(stored) != 2 {
		t.Fatalf("stored %d events, terminal %+v; want submitted + one lost terminal", len(stored), h.Terminal)
	}
	// Asked again (another replica, no cache): the same answer and still one terminal event.
	other := NewService(forgetful(), 8)
	other.Events = b
	again, err := other.Status(ctx, m.DeliberationID)
	if err != nil || again.Status != domain.StatusFailed || again.ErrorType != domain.ErrorTypeLost {
		t.Errorf("second replica: got %+v, %v", again, err)
	}
	if stored, _ := b.Stored(ctx, m.DeliberationID); len(stored) != 2 {
		t.Errorf("stored %d events after a second look, want 2", len(stored))
	}
}

func TestFinishedDeliberationRayForgotIsAnsweredFromItsEvents(t *testing.T) {
	b := testenv.NATS(t)
	ctx := context.Background()
	m := domain.JobMeta{DeliberationID: "delib-done1", TaskID: "t-done", NumAgents: 1}
	a := domain.AgentResult{AgentID: "a1", Status: "completed", Proposal: "ship it", Score: 0.9}
	for _, build := range []func() (events.Event, error){
		func() (events.Event, error) { return events.SubmittedEvent(events.SourceExecute, m) },
		func() (events.Event, error) { return events.AgentEvent(events.SourcePayload, m, 0, a) },
		func() (events.Event, error) {
			return events.TerminalEvent(events.SourcePayload, m, domain.StatusCompleted, &domain.Outcome{CompletedAgents: 1}, "", "")
		},
	} {
		ev, _ := build()
		if err := b.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	svc := NewService(forgetful(), 8)
	svc.Events = b
	rep, err := svc.Status(ctx, m.DeliberationID)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != domain.StatusCompleted || rep.Outcome == nil || len(rep.Outcome.Agents) != 1 ||
		rep.Outcome.Agents[0].Proposal != "ship it" || rep.ErrorType != "" {
		t.Errorf("got %+v (outcome %+v), want completed with the agent's proposal", rep, rep.Outcome)
	}
}

func TestNATSDownLeavesTheOriginalAnswer(t *testing.T) {
	b := testenv.NATS(t)
	b.Close()
	svc := NewService(forgetful(), 8)
	svc.Events = b
	rep, err := svc.Status(context.Background(), "delib-whoknows")
	if err != nil || rep.Status != domain.StatusNotFound {
		t.Errorf("got %+v, %v; want not_found when NATS cannot say", rep, err)
	}
}
