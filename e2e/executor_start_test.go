//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/executor"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// An executor deployed with a PAYLOAD_NATS_URL the Ray head cannot reach (a wrong address, a
// credential the Ray pods lack) fails by itself before the deployers' StartupGrace, and Ray's
// job message says why; the deployers then submit the next generation, counting the crash.
// Without the payload's start bound the driver hung in nats-py's endless first connect until
// it was stopped as stuck, and Ray said only "Job was intentionally stopped".
func TestExecutorThatCannotReachNATSFailsWithItsReason(t *testing.T) {
	t.Parallel()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	srv, err := natslocal.Start(addr, filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	unreachable := fmt.Sprintf("nats://127.0.0.1:%d", testenv.FreePort(t))
	s := privateSystem(t, "nats://"+addr, "LOG_LEVEL=warn", "PAYLOAD_NATS_URL="+unreachable)
	ctx := context.Background()

	first := waitDeploy(t, s, func(d records.Deploy) bool { return d.Generation == 1 && d.SubmissionID != "" }, time.Minute)
	var job ray.JobDetails
	for deadline := time.Now().Add(executor.StartupGrace + time.Minute); ; time.Sleep(time.Second) {
		job, err = s.ray.Job(ctx, first.SubmissionID)
		if err == nil && job.Status.Terminal() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("executor job %s still %s (%v) %s after its submission", first.SubmissionID, job.Status, err,
				executor.StartupGrace+time.Minute)
		}
	}
	ran := job.EndTime.Sub(domain.ParseTime(first.At))
	t.Logf("executor job %s %s %s after its submission: %.300s", first.SubmissionID, job.Status, ran.Round(time.Second), job.Message)
	if job.Status != ray.StatusFailed || !strings.Contains(job.Message, "not reachable within 90s of the executor's start") ||
		!strings.Contains(job.Message, strings.TrimPrefix(unreachable, "nats://")) || !strings.Contains(job.Message, "PAYLOAD_NATS_URL") {
		t.Errorf("got %s with message %q, want FAILED naming the unreachable NATS and PAYLOAD_NATS_URL", job.Status, job.Message)
	}
	if ran >= executor.StartupGrace {
		t.Errorf("the job ran %s, want it to fail by itself before the deployers' StartupGrace (%s)", ran, executor.StartupGrace)
	}
	next := waitDeploy(t, s, func(d records.Deploy) bool { return d.Generation == 2 }, time.Minute)
	if next.Failures != 1 || next.Previous != first.SubmissionID {
		t.Errorf("got deploy %+v, want generation 2 after one crash, naming %s as previous", next, first.SubmissionID)
	}
}

// waitDeploy waits until the system's deploy key satisfies ok and returns it.
func waitDeploy(t *testing.T, s *system, ok func(records.Deploy) bool, within time.Duration) records.Deploy {
	t.Helper()
	var d records.Deploy
	var err error
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if d, _, err = s.store.Deploy(context.Background()); err == nil && ok(d) {
			return d
		}
	}
	t.Fatalf("the deploy key never got there within %s: last %+v (%v)", within, d, err)
	return d
}
