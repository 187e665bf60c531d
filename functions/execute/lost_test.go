package execute

import (
	"context"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// A retry of a deliberation Ray lost (its head restarted and forgot the job) must not run it
// again: the stored terminal event says it was accepted and has ended.
func TestRetryOfADeliberationRayLostDoesNotRunItTwice(t *testing.T) {
	bus := testenv.NATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	submits := 0
	svc := &Service{
		Jobs: &fakeJobs{JobFn: notFound, SubmitFn: func(_ context.Context, r ray.SubmitRequest) (string, error) {
			submits++
			return r.SubmissionID, nil
		}},
		WorkingDirs: fakeWD{},
		Events:      bus,
	}
	lostID := domain.DeliberationIDForKey("lost-key")
	ev, _ := events.LostEvent(events.SourceStatus, domain.JobMeta{DeliberationID: lostID, TaskID: "t1"})
	if err := bus.Publish(ctx, ev); err != nil {
		t.Fatal(err)
	}
	sub, err := svc.Execute(ctx, validRequest(), "lost-key", "", quiet)
	if err != nil || sub.DeliberationID != lostID || !sub.Duplicate || submits != 0 {
		t.Fatalf("retry of a lost deliberation: got %+v, %v, %d submits; want the same id, duplicate, no submit", sub, err, submits)
	}
	// A key whose deliberation never ended is submitted as usual.
	sub, err = svc.Execute(ctx, validRequest(), "fresh-key", "", quiet)
	if err != nil || sub.Duplicate || submits != 1 {
		t.Fatalf("fresh key: got %+v, %v, %d submits; want one submit", sub, err, submits)
	}
}
