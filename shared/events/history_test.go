package events

import (
	"context"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

func TestSummarizeRebuildsWhatRayForgot(t *testing.T) {
	_, b := local(t)
	ctx := context.Background()
	m := domain.JobMeta{DeliberationID: "delib-h1", TaskID: "t-h1", Kind: domain.KindDeliberation, NumAgents: 2, Traceparent: "00-abc"}
	o := &domain.Outcome{CompletedAgents: 1, FailedAgents: 1, DurationMS: 1500}
	publishAll(t, b,
		func() (Event, error) { return SubmittedEvent(SourceExecute, m) },
		func() (Event, error) { return StartedEvent(SourcePayload, m) },
		func() (Event, error) {
			return AgentEvent(SourcePayload, m, 1, domain.AgentResult{AgentID: "b", Status: "failed", Error: "HTTP 500"})
		},
		func() (Event, error) {
			return AgentEvent(SourcePayload, m, 0, domain.AgentResult{AgentID: "a", Status: "completed", Proposal: "p", Score: 0.5})
		},
		func() (Event, error) { return TerminalEvent(SourcePayload, m, domain.StatusCompleted, o, "", "") },
	)
	stored, err := b.Stored(ctx, m.DeliberationID)
	if err != nil {
		t.Fatal(err)
	}
	h := Summarize(stored)
	if !h.Submitted || h.Meta.TaskID != "t-h1" || h.Meta.NumAgents != 2 || h.Meta.Traceparent != "00-abc" || h.Meta.Kind != domain.KindDeliberation {
		t.Errorf("got meta %+v submitted=%v", h.Meta, h.Submitted)
	}
	if h.Terminal == nil || h.Terminal.Status != "completed" || h.EndedAt.IsZero() {
		t.Fatalf("got terminal %+v", h.Terminal)
	}
	out := h.Outcome()
	if out == nil || len(out.Agents) != 2 || out.Agents[0].AgentID != "a" || out.Agents[0].Proposal != "p" ||
		out.Agents[1].Status != "failed" || out.CompletedAgents != 1 || out.DurationMS != 1500 {
		t.Errorf("got outcome %+v", out)
	}
	if s, ok := out.Summarize(); !ok || s.Best.AgentID != "a" {
		t.Errorf("summary %+v %v, want agent a best", s, ok)
	}
}

func TestLostEventIsTheOneTerminal(t *testing.T) {
	_, b := local(t)
	ctx := context.Background()
	m := domain.JobMeta{DeliberationID: "delib-h2", TaskID: "t-h2", NumAgents: 1}
	publishAll(t, b,
		func() (Event, error) { return SubmittedEvent(SourceExecute, m) },
		func() (Event, error) { return LostEvent(SourceStatus, m) },
		// A driver that somehow reports later cannot add a second end.
		func() (Event, error) { return TerminalEvent(SourcePayload, m, domain.StatusCompleted, nil, "", "") },
	)
	stored, err := b.Stored(ctx, m.DeliberationID)
	if err != nil {
		t.Fatal(err)
	}
	h := Summarize(stored)
	if len(stored) != 2 || h.Terminal == nil || h.Terminal.Status != "failed" || h.Terminal.ErrorType != domain.ErrorTypeLost {
		t.Fatalf("got %d stored, terminal %+v", len(stored), h.Terminal)
	}
	if h.Outcome() != nil {
		t.Error("a lost deliberation has no outcome")
	}
	if _, err := LostEvent(SourceStatus, domain.JobMeta{}); err == nil {
		t.Error("a lost event without an id was built")
	}
}

func TestSubmittedSinceReadsOnlyTheWindow(t *testing.T) {
	_, b := local(t)
	ctx := context.Background()
	first := domain.JobMeta{DeliberationID: "delib-s1", TaskID: "t"}
	publishAll(t, b, func() (Event, error) { return SubmittedEvent(SourceExecute, first) })
	time.Sleep(20 * time.Millisecond)
	cut := time.Now()
	for _, id := range []string{"delib-s2", "delib-s3", "delib-s4"} {
		m := domain.JobMeta{DeliberationID: id, TaskID: "t"}
		publishAll(t, b,
			func() (Event, error) { return SubmittedEvent(SourceExecute, m) },
			func() (Event, error) { return StartedEvent(SourcePayload, m) })
	}
	got, err := b.SubmittedSince(ctx, cut, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, st := range got {
		if st.Kind() != Submitted {
			t.Errorf("got a %s event", st.Kind())
		}
		ids = append(ids, st.Subject)
	}
	if len(ids) != 3 || ids[0] != "delib-s2" || ids[2] != "delib-s4" {
		t.Errorf("got %v, want delib-s2..s4 in order", ids)
	}
	all, err := b.SubmittedSince(ctx, time.Time{}, 2)
	if err != nil || len(all) != 2 || all[0].Subject != "delib-s1" {
		t.Errorf("limit 2 from the start: got %d (%v)", len(all), err)
	}
}
