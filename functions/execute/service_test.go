package execute

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// fakeJobs is a hand-written fake of the Ray port: each method delegates to its Fn field.
// A nil PackageFn takes every package.
type fakeJobs struct {
	SubmitFn  func(context.Context, ray.SubmitRequest) (string, error)
	JobFn     func(context.Context, string) (ray.JobDetails, error)
	StopFn    func(context.Context, string) (bool, error)
	PackageFn func(context.Context, ray.Package) error
}

func (f *fakeJobs) Submit(ctx context.Context, r ray.SubmitRequest) (string, error) {
	return f.SubmitFn(ctx, r)
}
func (f *fakeJobs) Job(ctx context.Context, id string) (ray.JobDetails, error) {
	return f.JobFn(ctx, id)
}
func (f *fakeJobs) Stop(ctx context.Context, id string) (bool, error) { return f.StopFn(ctx, id) }
func (f *fakeJobs) EnsurePackage(ctx context.Context, p ray.Package) error {
	if f.PackageFn == nil {
		return nil
	}
	return f.PackageFn(ctx, p)
}

type fakeWD struct{ err error }

func (f fakeWD) WorkingDir(context.Context) (string, error) { return "gcs://_ray_pkg_test.zip", f.err }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func validRequest() domain.Request {
	return domain.Request{
		Kind: domain.KindDeliberation, TaskID: "t1", TaskDescription: "d", Role: "dev",
		Constraints: domain.Constraints{StoryID: "s1"},
		Agents:      []domain.Agent{{ID: "a1", Role: "dev", Model: "m"}},
		VLLMURL:     "http://127.0.0.1:8000", VLLMModel: "m",
	}
}

func notFound(context.Context, string) (ray.JobDetails, error) {
	return ray.JobDetails{}, fmt.Errorf("ray: %w", domain.ErrNotFound)
}

func TestExecuteSubmitsWhatStatusAndListNeed(t *testing.T) {
	var got ray.SubmitRequest
	var uploaded []ray.Package
	var calls []string
	svc := &Service{
		Jobs: &fakeJobs{JobFn: notFound, SubmitFn: func(_ context.Context, r ray.SubmitRequest) (string, error) {
			calls = append(calls, "submit")
			got = r
			return r.SubmissionID, nil
		}, PackageFn: func(_ context.Context, p ray.Package) error {
			calls = append(calls, "package")
			uploaded = append(uploaded, p)
			return nil
		}},
		WorkingDirs: fakeWD{},
	}
	sub, err := svc.Execute(context.Background(), validRequest(), "k1", "00-abc-def-01", quiet)
	if err != nil {
		t.Fatal(err)
	}
	if sub.DeliberationID != domain.DeliberationIDForKey("k1") || got.SubmissionID != sub.DeliberationID {
		t.Errorf("got id %q submitted as %q, want both %q", sub.DeliberationID, got.SubmissionID, domain.DeliberationIDForKey("k1"))
	}
	meta, ours := domain.ParseJobMeta(got.Metadata)
	if !ours || meta.TaskID != "t1" || meta.NumAgents != 1 || meta.StoryID != "s1" || meta.Traceparent != "00-abc-def-01" {
		t.Errorf("got metadata %v, want ours with task t1, 1 agent, story s1 and the traceparent", got.Metadata)
	}
	if got.Entrypoint != ray.PayloadEntrypoint || strings.Contains(got.Entrypoint, "t1") {
		t.Errorf("got entrypoint %q, want the fixed payload command with no request text", got.Entrypoint)
	}
	if wd := got.RuntimeEnv["working_dir"]; wd != "gcs://_ray_pkg_test.zip" {
		t.Errorf("got working_dir %v", wd)
	}
	// The request goes first, in a package of its own that the job names.
	if strings.Join(calls, ",") != "package,submit" || len(uploaded) != 1 {
		t.Fatalf("got calls %v, want the request package uploaded, then the job submitted", calls)
	}
	if mods, _ := got.RuntimeEnv["py_modules"].([]string); len(mods) != 1 || mods[0] != uploaded[0].URI() {
		t.Errorf("got py_modules %v, want [%s]", got.RuntimeEnv["py_modules"], uploaded[0].URI())
	}
	env, _ := got.RuntimeEnv["env_vars"].(map[string]string)
	if !strings.HasPrefix(env[ray.RequestModuleEnv], ray.RequestModulePrefix) {
		t.Errorf("got env_vars %v, want %s naming the request module", env, ray.RequestModuleEnv)
	}
	for k, v := range env {
		if strings.Contains(v, "t1") || k == "RAY_EXECUTOR_REQUEST" {
			t.Errorf("got env var %s=%q, want no request text in env_vars", k, v)
		}
	}
}

func TestExecuteErrors(t *testing.T) {
	ours := func(req domain.Request) func(context.Context, string) (ray.JobDetails, error) {
		return func(_ context.Context, id string) (ray.JobDetails, error) {
			job, _ := ray.DeliberationJob(id, req, "", ray.JobOptions{})
			return ray.JobDetails{SubmissionID: id, Status: ray.StatusRunning, Metadata: job.Submit.Metadata}, nil
		}
	}
	normalized := validRequest()
	if err := domain.Normalize(&normalized, domain.Limits{}); err != nil {
		t.Fatal(err)
	}
	other := normalized
	other.TaskDescription = "something else"
	noSubmit := func(context.Context, ray.SubmitRequest) (string, error) {
		return "", errors.New("must not submit")
	}
	cases := []struct {
		name     string
		jobs     *fakeJobs
		wd       fakeWD
		key      string
		want     error
		wantDup  bool
		wantCode int
	}{
		{"Ray down on lookup", &fakeJobs{JobFn: func(context.Context, string) (ray.JobDetails, error) {
			return ray.JobDetails{}, domain.ErrUnavailable
		}, SubmitFn: noSubmit}, fakeWD{}, "k", domain.ErrUnavailable, false, 503},
		{"Ray down on submit", &fakeJobs{JobFn: notFound, SubmitFn: func(context.Context, ray.SubmitRequest) (string, error) {
			return "", fmt.Errorf("ray: %w", domain.ErrUnavailable)
		}}, fakeWD{}, "", domain.ErrUnavailable, false, 503},
		{"Ray slow", &fakeJobs{JobFn: notFound, SubmitFn: func(context.Context, ray.SubmitRequest) (string, error) {
			return "", domain.ErrDeadline
		}}, fakeWD{}, "k", domain.ErrDeadline, false, 504},
		{"Ray refuses our token", &fakeJobs{JobFn: notFound, SubmitFn: func(context.Context, ray.SubmitRequest) (string, error) {
			return "", domain.ErrUnauthenticated
		}}, fakeWD{}, "k", domain.ErrUnauthenticated, false, 502},
		{"package upload fails", &fakeJobs{JobFn: notFound, SubmitFn: noSubmit},
			fakeWD{err: domain.ErrUnavailable}, "k", domain.ErrUnavailable, false, 503},
		{"request package upload fails", &fakeJobs{JobFn: notFound, SubmitFn: noSubmit,
			PackageFn: func(context.Context, ray.Package) error { return fmt.Errorf("ray: %w", domain.ErrUnavailable) }},
			fakeWD{}, "k", domain.ErrUnavailable, false, 503},
		{"request package upload times out", &fakeJobs{JobFn: notFound, SubmitFn: noSubmit,
			PackageFn: func(context.Context, ray.Package) error { return domain.ErrDeadline }},
			fakeWD{}, "", domain.ErrDeadline, false, 504},
		{"existing job, same request", &fakeJobs{JobFn: ours(normalized), SubmitFn: noSubmit}, fakeWD{}, "k", nil, true, 200},
		{"existing job, other request", &fakeJobs{JobFn: ours(other), SubmitFn: noSubmit}, fakeWD{}, "k", domain.ErrConflict, false, 409},
		{"existing foreign job", &fakeJobs{JobFn: func(_ context.Context, id string) (ray.JobDetails, error) {
			return ray.JobDetails{SubmissionID: id, Metadata: map[string]string{"x": "y"}}, nil
		}, SubmitFn: noSubmit}, fakeWD{}, "k", domain.ErrConflict, false, 409},
		{"lost the race", &fakeJobs{
			JobFn: func() func(context.Context, string) (ray.JobDetails, error) {
				var n atomic.Int32
				return func(ctx context.Context, id string) (ray.JobDetails, error) {
					if n.Add(1) == 1 {
						return notFound(ctx, id)
					}
					return ours(normalized)(ctx, id)
				}
			}(),
			SubmitFn: func(context.Context, ray.SubmitRequest) (string, error) { return "", domain.ErrAlreadyExists },
		}, fakeWD{}, "k", nil, true, 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			svc := &Service{Jobs: tc.jobs, WorkingDirs: tc.wd}
			sub, err := svc.Execute(context.Background(), validRequest(), tc.key, "", quiet)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if sub.Duplicate != tc.wantDup {
				t.Errorf("got duplicate %v, want %v", sub.Duplicate, tc.wantDup)
			}
			if err != nil {
				if code, _ := rpcevents.HTTPStatus(err); code != tc.wantCode {
					t.Errorf("got HTTP %d, want %d", code, tc.wantCode)
				}
			}
		})
	}
}

func TestInvalidRequestNeverReachesRay(t *testing.T) {
	fail := &fakeJobs{
		SubmitFn: func(context.Context, ray.SubmitRequest) (string, error) { t.Error("submitted"); return "", nil },
		JobFn: func(context.Context, string) (ray.JobDetails, error) {
			t.Error("looked up")
			return ray.JobDetails{}, nil
		},
	}
	h := NewHandler(&Service{Jobs: fail, WorkingDirs: fakeWD{}}, "test", 0, quiet)
	srv := httptest.NewServer(h)
	defer srv.Close()
	c := &rpcevents.Client{Source: "test"}
	var resp pb.ExecuteDeliberationResponse
	err := c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation,
		&pb.ExecuteDeliberationRequest{TaskId: "t"}, rpcevents.CallOptions{IdempotencyKey: "k"}, &resp)
	var se *rpcevents.StatusError
	if !errors.As(err, &se) || se.HTTPStatus != http.StatusBadRequest {
		t.Fatalf("got %v, want 400", err)
	}
	for _, field := range []string{"task_description", "role", "vllm_url", "vllm_model", "agents", "constraints.story_id"} {
		if !strings.Contains(se.Message, field) {
			t.Errorf("got %q, want it to name %s", se.Message, field)
		}
	}
}

// fakePublisher is a hand-written fake of the event bus.
type fakePublisher struct {
	PublishFn func(context.Context, events.Event) error
}

func (f *fakePublisher) Publish(ctx context.Context, ev events.Event) error {
	return f.PublishFn(ctx, ev)
}

// A PENDING job starts once its reservation fits even after Ray took its stop, so its
// cancelled event is stored first (the payload looks for it before running any agent),
// and once stored the deliberation is cancelled whatever Ray answers to the stop.
func TestCancelPendingStoresTheEventBeforeTheStop(t *testing.T) {
	ours := domain.JobMeta{DeliberationID: "d1", TaskID: "t1", NumAgents: 2}.Map()
	pending := func(_ context.Context, id string) (ray.JobDetails, error) {
		return ray.JobDetails{SubmissionID: id, Status: ray.StatusPending, Metadata: ours}, nil
	}
	rayDown := fmt.Errorf("ray: %w", domain.ErrUnavailable)
	natsDown := fmt.Errorf("events: %w", domain.ErrUnavailable)
	cases := []struct {
		name       string
		stopErr    error
		publishErr error
		want       domain.Status
		wantErr    error
		wantMsg    string
	}{
		{"stop taken", nil, nil, domain.StatusCancelled, nil, "deliberation cancelled before it started"},
		{"stop refused, event stored", rayDown, nil, domain.StatusCancelled, nil, "deliberation cancelled before it started"},
		{"stop taken, NATS down", nil, natsDown, domain.StatusCancelled, nil, "could not be recorded on NATS"},
		{"stop refused, NATS down", rayDown, natsDown, "", domain.ErrUnavailable, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var calls []string
			var published events.Event
			svc := &Service{
				Jobs: &fakeJobs{JobFn: pending, StopFn: func(context.Context, string) (bool, error) {
					calls = append(calls, "stop")
					return tc.stopErr == nil, tc.stopErr
				}},
				Events: &fakePublisher{PublishFn: func(_ context.Context, ev events.Event) error {
					calls = append(calls, "publish")
					published = ev
					return tc.publishErr
				}},
			}
			c, err := svc.Cancel(context.Background(), "d1", quiet)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("got error %v, want %v", err, tc.wantErr)
			}
			if c.Status != tc.want || !strings.Contains(c.Message, tc.wantMsg) {
				t.Errorf("got %q %q, want %q with %q", c.Status, c.Message, tc.want, tc.wantMsg)
			}
			if got := strings.Join(calls, ","); got != "publish,stop" {
				t.Errorf("got calls %s, want publish,stop (the event stored before Ray is asked)", got)
			}
			if published.ID != "d1.terminal" || published.Kind() != events.Cancelled {
				t.Errorf("got event %s of kind %s, want d1.terminal, cancelled", published.ID, published.Kind())
			}
		})
	}
}

// A running job is stopped before its cancelled event is stored: a stop Ray refuses leaves
// no cancelled event behind for a deliberation that goes on and completes.
func TestCancelRunningStopsBeforeTheEvent(t *testing.T) {
	ours := domain.JobMeta{DeliberationID: "d1"}.Map()
	var calls []string
	svc := &Service{
		Jobs: &fakeJobs{
			JobFn: func(_ context.Context, id string) (ray.JobDetails, error) {
				return ray.JobDetails{SubmissionID: id, Status: ray.StatusRunning, Metadata: ours}, nil
			},
			StopFn: func(context.Context, string) (bool, error) {
				calls = append(calls, "stop")
				return false, fmt.Errorf("ray: %w", domain.ErrUnavailable)
			},
		},
		Events: &fakePublisher{PublishFn: func(context.Context, events.Event) error {
			calls = append(calls, "publish")
			return nil
		}},
	}
	if _, err := svc.Cancel(context.Background(), "d1", quiet); !errors.Is(err, domain.ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	if got := strings.Join(calls, ","); got != "stop" {
		t.Errorf("got calls %s, want stop alone", got)
	}
}

func TestCancel(t *testing.T) {
	running := func(st ray.JobStatus, md map[string]string) func(context.Context, string) (ray.JobDetails, error) {
		return func(_ context.Context, id string) (ray.JobDetails, error) {
			return ray.JobDetails{SubmissionID: id, Status: st, Metadata: md}, nil
		}
	}
	ours := domain.JobMeta{DeliberationID: "d1"}.Map()
	var stopped int
	stop := func(context.Context, string) (bool, error) { stopped++; return true, nil }
	cases := []struct {
		name      string
		job       func(context.Context, string) (ray.JobDetails, error)
		want      domain.Status
		wantErr   error
		wantStops int
	}{
		{"running", running(ray.StatusRunning, ours), domain.StatusCancelled, nil, 1},
		{"already succeeded", running(ray.StatusSucceeded, ours), domain.StatusCompleted, nil, 0},
		{"already failed", running(ray.StatusFailed, ours), domain.StatusFailed, nil, 0},
		{"unknown", notFound, "", domain.ErrNotFound, 0},
		{"foreign", running(ray.StatusRunning, map[string]string{}), "", domain.ErrNotFound, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stopped = 0
			svc := &Service{Jobs: &fakeJobs{JobFn: tc.job, StopFn: stop}}
			c, err := svc.Cancel(context.Background(), "d1", quiet)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if c.Status != tc.want || stopped != tc.wantStops {
				t.Errorf("got %q with %d stops, want %q with %d", c.Status, stopped, tc.want, tc.wantStops)
			}
		})
	}
}

// Cancelling an id this system could never have minted (the original's, with ':') is
// NOT_FOUND without a call to Ray; an empty or oversize id is a malformed request.
func TestCancelForeignIDIsNotFoundWithoutAskingRay(t *testing.T) {
	asked := 0
	svc := &Service{Jobs: &fakeJobs{JobFn: func(context.Context, string) (ray.JobDetails, error) {
		asked++
		return ray.JobDetails{}, domain.ErrNotFound
	}}}
	for _, id := range []string{"deliberation-ceremony-c1:story-s1:role-QA-1733000000", "a.b", "../x", "delib >"} {
		if _, err := svc.Cancel(context.Background(), id, slog.Default()); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("cancel %q: got %v, want ErrNotFound", id, err)
		}
	}
	if asked != 0 {
		t.Errorf("got %d calls to Ray for foreign ids, want none", asked)
	}
	for _, id := range []string{"", strings.Repeat("x", domain.MaxLookupIDBytes+1)} {
		if _, err := svc.Cancel(context.Background(), id, slog.Default()); !errors.Is(err, domain.ErrInvalid) {
			t.Errorf("cancel an id of %d bytes: got %v, want ErrInvalid", len(id), err)
		}
	}
}
