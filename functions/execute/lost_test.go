package execute

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
)

// A retry of a deliberation Ray lost (its head restarted and forgot the job) must not run it
// again: the stored terminal event says it was accepted and has ended.
func TestRetryOfADeliberationRayLostDoesNotRunItTwice(t *testing.T) {
	srv, err := events.StartLocal("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	bus, err := events.Connect(events.Config{URL: srv.URL(), Provision: true}, "execute-test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bus.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for !bus.Connected() && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if err := bus.Provision(ctx); err != nil {
		t.Fatal(err)
	}
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
