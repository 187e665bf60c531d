package executor

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/executor/payload"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func request() domain.Request {
	return domain.Request{
		Kind: domain.KindDeliberation, TaskID: "t1", TaskDescription: `<b>"x" & y</b>`, Role: "dev",
		Constraints: domain.Constraints{StoryID: "s1", PlanID: "p1", TimeoutSeconds: 60, MaxRetries: 2,
			Metadata: map[string]string{"task_type": "review"}},
		Agents:  []domain.Agent{{ID: "a1", Role: "dev", Model: "m", PromptTemplate: "{task_description}"}},
		VLLMURL: "http://127.0.0.1:8000", VLLMModel: "m",
	}
}

func TestWorkMessage(t *testing.T) {
	r := request()
	body, err := WorkMessage("d1", r, "00-tp-01")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), `<b>\"x\" & y</b>`) {
		t.Errorf("got %s, want markup unescaped (the payload is not HTML)", body)
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"version": 1.0, "deliberation_id": "d1", "kind": "deliberation", "task_id": "t1",
		"task_description": r.TaskDescription, "role": "dev", "story_id": "s1", "plan_id": "p1",
		"timeout_seconds": 60.0, "max_retries": 2.0, "vllm_url": "http://127.0.0.1:8000", "vllm_model": "m",
		"traceparent": "00-tp-01"}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s: got %v, want %v", k, m[k], v)
		}
	}
	if md, _ := m["metadata"].(map[string]any); md["task_type"] != "review" {
		t.Errorf("got metadata %v", m["metadata"])
	}
	agents, _ := m["agents"].([]any)
	if len(agents) != 1 {
		t.Fatalf("got agents %v", m["agents"])
	}
	if a, _ := agents[0].(map[string]any); a["id"] != "a1" || a["prompt_template"] != "{task_description}" {
		t.Errorf("got agent %v", a)
	}
	var back PayloadRequest
	if err := json.Unmarshal(body, &back); err != nil {
		t.Fatal(err)
	}
	if back.DeliberationID != "d1" || back.TaskDescription != r.TaskDescription || !reflect.DeepEqual(back.Agents, r.Agents) ||
		!reflect.DeepEqual(back.Metadata, r.Constraints.Metadata) {
		t.Errorf("round trip: got %+v", back)
	}
	// No metadata is an empty object, never null (parse_request wants a mapping).
	r.Constraints.Metadata = nil
	body, _ = WorkMessage("d1", r, "")
	if !strings.Contains(string(body), `"metadata":{}`) {
		t.Errorf("got %s, want metadata {}", body)
	}
}

func TestVersionAndRequestHash(t *testing.T) {
	ev := natsbus.Config{URL: "nats://n:4222", EventsStream: natsbus.DefaultEventsStream}
	rc := records.Config{Bucket: "B", WorkStream: "W", CountersStream: "C", Retention: time.Hour}
	base := Settings{MinReplicas: 1, MaxReplicas: 4, ReplicaConcurrency: 64, MaxDeliveries: 3, NATSURL: "nats://n:4222", LogLevel: "info"}
	v := Version(base.Env(ev, rc), 0)
	if len(v) != 16 || v != Version(base.Env(ev, rc), 0) {
		t.Fatalf("got %q, want 16 stable hex digits", v)
	}
	if _, err := hex.DecodeString(v); err != nil {
		t.Errorf("version %q is not hex", v)
	}
	// Settings reach the executor only when it is deployed: each one the executor reads must
	// make another version (a roll), and nothing else may.
	changed := map[string]func(*Settings, *natsbus.Config, *records.Config, *float64){
		"EXECUTOR_MAX_REPLICAS":        func(s *Settings, _ *natsbus.Config, _ *records.Config, _ *float64) { s.MaxReplicas = 8 },
		"EXECUTOR_MIN_REPLICAS":        func(s *Settings, _ *natsbus.Config, _ *records.Config, _ *float64) { s.MinReplicas = 2 },
		"EXECUTOR_REPLICA_CONCURRENCY": func(s *Settings, _ *natsbus.Config, _ *records.Config, _ *float64) { s.ReplicaConcurrency = 128 },
		"EXECUTOR_MAX_DELIVERIES":      func(s *Settings, _ *natsbus.Config, _ *records.Config, _ *float64) { s.MaxDeliveries = 5 },
		"EXECUTOR_REPLICA_NUM_CPUS":    func(s *Settings, _ *natsbus.Config, _ *records.Config, _ *float64) { s.ReplicaNumCPUs = 0.5 },
		"EXECUTOR_DRIVER_NUM_CPUS":     func(_ *Settings, _ *natsbus.Config, _ *records.Config, c *float64) { *c = 1 },
		"EXECUTOR_LOG_LEVEL":           func(s *Settings, _ *natsbus.Config, _ *records.Config, _ *float64) { s.LogLevel = "debug" },
		"PAYLOAD_NATS_URL":             func(s *Settings, _ *natsbus.Config, _ *records.Config, _ *float64) { s.NATSURL = "nats://other:4222" },
		"NATS_EVENTS_STREAM":           func(_ *Settings, e *natsbus.Config, _ *records.Config, _ *float64) { e.EventsStream = "E2" },
		"NATS_WORK_STREAM":             func(_ *Settings, _ *natsbus.Config, r *records.Config, _ *float64) { r.WorkStream = "W2" },
		"RETENTION":                    func(_ *Settings, _ *natsbus.Config, r *records.Config, _ *float64) { r.Retention = 2 * time.Hour },
		"OTEL_EXPORTER_OTLP_ENDPOINT": func(s *Settings, _ *natsbus.Config, _ *records.Config, _ *float64) {
			s.Telemetry = map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
		},
	}
	seen := map[string]string{v: "the base settings"}
	for name, change := range changed {
		s, e, r, cpus := base, ev, rc, 0.0
		change(&s, &e, &r, &cpus)
		got := Version(s.Env(e, r), cpus)
		if prev, ok := seen[got]; ok {
			t.Errorf("changing %s gives version %s, the same as %s: a running executor would keep the old setting", name, got, prev)
		}
		seen[got] = name
	}
	// What the executor does not read (the functions' own NATS address, the Ray client's
	// settings) is not in its environment, and the map's order is not part of the version.
	other := ev
	other.URL = "nats://functions-only:4222"
	if got := Version(base.Env(other, rc), 0); got != v {
		t.Errorf("the functions' NATS_URL (PAYLOAD_NATS_URL set) changed the version: %s, want %s", got, v)
	}
	if version([]byte("pkg"), map[string]string{"A": "1", "B": "2"}, 0) != version([]byte("pkg"), map[string]string{"B": "2", "A": "1"}, 0) ||
		version([]byte("pkg"), map[string]string{"A": "1"}, 0) == version([]byte("pkg2"), map[string]string{"A": "1"}, 0) ||
		version([]byte("pkg"), map[string]string{"A": "1=B"}, 0) == version([]byte("pkg"), map[string]string{"A": "1", "B": ""}, 0) {
		t.Error("the version must follow the package and each setting, and nothing else")
	}
	a, b := request(), request()
	if RequestHash(a) != RequestHash(b) {
		t.Error("the same request hashes differently")
	}
	b.TaskDescription += "!"
	if RequestHash(a) == RequestHash(b) || !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(RequestHash(a)) {
		t.Errorf("got %q and %q, want 32 hex digits, different for different requests", RequestHash(a), RequestHash(b))
	}
}

func TestReadSettings(t *testing.T) {
	env := func(m map[string]string) *config.Reader {
		return config.NewReader(func(k string) string { return m[k] })
	}
	r := env(nil)
	s := ReadSettings(r, "nats://n:4222")
	if r.Err() != nil || s.MinReplicas != 1 || s.MaxReplicas != 4 || s.ReplicaConcurrency != 64 || s.MaxDeliveries != 3 ||
		s.NATSURL != "nats://n:4222" || s.Check != 5*time.Second {
		t.Errorf("defaults: got %+v, %v", s, r.Err())
	}
	for k, v := range map[string]string{
		"EXECUTOR_MIN_REPLICAS": "0", "EXECUTOR_REPLICA_CONCURRENCY": "10001", "EXECUTOR_MAX_DELIVERIES": "0",
		"EXECUTOR_REPLICA_NUM_CPUS": "-1", "EXECUTOR_CHECK_INTERVAL": "0s", "EXECUTOR_LOG_LEVEL": "loud",
	} {
		r := env(map[string]string{k: v})
		ReadSettings(r, "")
		if r.Err() == nil || !strings.Contains(r.Err().Error(), strings.TrimSuffix(k, "_NUM_CPUS")) {
			t.Errorf("%s=%s: got %v, want an error naming it", k, v, r.Err())
		}
	}
	// A NATS URL with credentials never goes into the executor job's runtime_env (readable
	// from the Ray dashboard), and the refusal does not print it.
	for _, u := range []string{"nats://exec:s3cr3t@cluster:4222", "nats://a:4222, nats://tok3n@b:4222"} {
		r := env(nil)
		ReadSettings(r, u)
		if r.Err() == nil || !strings.Contains(r.Err().Error(), "carries credentials") || strings.Contains(r.Err().Error(), "s3cr3t") ||
			strings.Contains(r.Err().Error(), "tok3n") {
			t.Errorf("NATS_URL %s: got %v, want a refusal that does not show it", "<redacted>", r.Err())
		}
	}
	r = env(map[string]string{"EXECUTOR_DEPLOY": "false"})
	if ReadSettings(r, "nats://exec:s3cr3t@cluster:4222"); r.Err() != nil {
		t.Errorf("with EXECUTOR_DEPLOY=false nothing is sent to Ray: got %v", r.Err())
	}
	r = env(map[string]string{"EXECUTOR_MIN_REPLICAS": "3", "EXECUTOR_MAX_REPLICAS": "2"})
	if ReadSettings(r, ""); r.Err() == nil || !strings.Contains(r.Err().Error(), "EXECUTOR_MAX_REPLICAS") {
		t.Errorf("max < min: got %v", r.Err())
	}
	s = ReadSettings(env(map[string]string{"PAYLOAD_NATS_URL": "nats://cluster:4222", "EXECUTOR_REPLICA_NUM_CPUS": "0.5"}), "nats://n")
	e := s.Env(natsbus.Config{EventsStream: "EV"}, records.Config{Bucket: "B", WorkStream: "W", CountersStream: "C", Retention: 2 * time.Hour})
	want := map[string]string{natsbus.PayloadURLEnv: "nats://cluster:4222", natsbus.PayloadEventsStreamEnv: "EV",
		"NATS_RECORDS_BUCKET": "B", "NATS_WORK_STREAM": "W", "NATS_COUNTERS_STREAM": "C", "RETENTION_SECONDS": "7200",
		"EXECUTOR_MIN_REPLICAS": "1", "EXECUTOR_MAX_REPLICAS": "4", "EXECUTOR_REPLICA_CONCURRENCY": "64",
		"EXECUTOR_MAX_DELIVERIES": "3", "EXECUTOR_REPLICA_NUM_CPUS": "0.5", "EXECUTOR_LOG_LEVEL": "info"}
	if !reflect.DeepEqual(e, want) {
		t.Errorf("got env %v, want %v", e, want)
	}
}

// fakeJobs is a hand-written fake of the Ray Jobs port, for the deployer's decisions (the
// real-Ray deploy is tested with the executor itself). jobs maps a submission id to what
// Job answers; an id it lacks is not found.
type fakeJobs struct {
	mu      sync.Mutex
	jobs    map[string]ray.JobStatus
	jobErr  error
	ends    map[string]time.Time // EndTime of an ended job (zero when absent)
	submits []ray.SubmitRequest
	stops   []string
	deletes []string
	// deleteErr, when set, is what Delete answers for a terminal job.
	deleteErr error
	delay     time.Duration
	// gate, when set, holds the first Submit until it is closed.
	gate chan struct{}
}

func (f *fakeJobs) Submit(_ context.Context, r ray.SubmitRequest) (string, error) {
	time.Sleep(f.delay)
	f.mu.Lock()
	gate := f.gate
	f.gate = nil
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.submits = append(f.submits, r)
	if f.jobs == nil {
		f.jobs = map[string]ray.JobStatus{}
	}
	f.jobs[r.SubmissionID] = ray.StatusPending
	return r.SubmissionID, nil
}

func (f *fakeJobs) Job(_ context.Context, id string) (ray.JobDetails, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.jobErr != nil {
		return ray.JobDetails{}, f.jobErr
	}
	st, ok := f.jobs[id]
	if !ok {
		return ray.JobDetails{}, fmt.Errorf("ray: job %s: %w", id, domain.ErrNotFound)
	}
	return ray.JobDetails{SubmissionID: id, Status: st, EndTime: f.ends[id]}, nil
}

// Delete answers as Ray does: not found for an unknown job, refused for a running one.
func (f *fakeJobs) Delete(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.jobs[id]
	switch {
	case !ok:
		return fmt.Errorf("ray: delete job %s: %w", id, domain.ErrNotFound)
	case !st.Terminal():
		return fmt.Errorf("ray: delete job %s: it is in a non-terminal state: %w", id, domain.ErrUnavailable)
	case f.deleteErr != nil:
		return f.deleteErr
	}
	delete(f.jobs, id)
	f.deletes = append(f.deletes, id)
	return nil
}

// end makes Ray report the job ended with status at the given time.
func (f *fakeJobs) end(id string, status ray.JobStatus, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ends == nil {
		f.ends = map[string]time.Time{}
	}
	f.jobs[id], f.ends[id] = status, at
}

func (f *fakeJobs) has(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.jobs[id]
	return ok
}

func (f *fakeJobs) Stop(_ context.Context, id string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stops = append(f.stops, id)
	f.jobs[id] = ray.StatusStopped
	return true, nil
}

func (f *fakeJobs) calls() (submits []ray.SubmitRequest, stops []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ray.SubmitRequest(nil), f.submits...), append([]string(nil), f.stops...)
}

type fakeWD struct{}

func (fakeWD) WorkingDir(context.Context) (string, error) { return "gcs://_ray_pkg_executor.zip", nil }

type env struct {
	store *records.Store
	kv    jetstream.KeyValue
	jobs  *fakeJobs
	now   time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	bus := testenv.NATS(t)
	s := records.New(bus.Conn(), bus.JetStream(), records.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	kv, err := bus.JetStream().KeyValue(ctx, records.DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	return &env{store: s, kv: kv, jobs: &fakeJobs{}, now: time.Now()}
}

func (e *env) deployer(version string) *Deployer {
	return &Deployer{Store: e.store, Jobs: e.jobs, WorkingDirs: fakeWD{}, Version: version,
		Env: map[string]string{"NATS_WORK_STREAM": "W"}, EntrypointNumCPUs: 0.25, Logger: quiet,
		Now: func() time.Time { return e.now }}
}

func (e *env) heartbeat(t *testing.T, version, submission string, at time.Time) {
	t.Helper()
	b, _ := json.Marshal(records.Heartbeat{Version: version, SubmissionID: submission, Replicas: 1, UpdatedAt: domain.FormatTime(at)})
	if _, err := e.kv.Put(context.Background(), records.KeyExecutor, b); err != nil {
		t.Fatal(err)
	}
}

func (e *env) deploy(t *testing.T) records.Deploy {
	t.Helper()
	d, _, err := e.store.Deploy(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func ensure(t *testing.T, d *Deployer, want State) {
	t.Helper()
	st, err := d.Ensure(context.Background())
	if err != nil || st != want {
		t.Fatalf("Ensure: got %q, %v, want %q", st, err, want)
	}
}

func TestEnsureFirstDeploy(t *testing.T) {
	e := newEnv(t)
	d := e.deployer("0123456789abcdef")
	ensure(t, d, StateDeployed)
	dep := e.deploy(t)
	if dep.Version != "0123456789abcdef" || dep.Generation != 1 || dep.At != domain.FormatTime(e.now) ||
		!regexp.MustCompile(`^ray-executor-0123456789ab-1-[0-9a-f]{8}$`).MatchString(dep.SubmissionID) {
		t.Errorf("deploy key %+v", dep)
	}
	subs, _ := e.jobs.calls()
	if len(subs) != 1 {
		t.Fatalf("got %d submits, want 1", len(subs))
	}
	s := subs[0]
	envVars, _ := s.RuntimeEnv["env_vars"].(map[string]string)
	if s.Entrypoint != Entrypoint || s.SubmissionID != dep.SubmissionID || s.RuntimeEnv["working_dir"] != "gcs://_ray_pkg_executor.zip" ||
		envVars["EXECUTOR_VERSION"] != dep.Version || envVars["EXECUTOR_SUBMISSION_ID"] != dep.SubmissionID ||
		envVars["NATS_WORK_STREAM"] != "W" || s.EntrypointNumCPUs != 0.25 ||
		s.Metadata[domain.MetaMarker] != MetadataMarker || s.Metadata["version"] != dep.Version {
		t.Errorf("got submission %+v", s)
	}
	if _, ok := d.Env["EXECUTOR_VERSION"]; ok {
		t.Error("submit wrote into the deployer's own Env")
	}
	if _, ok := s.Metadata["deliberation_id"]; ok || len(s.Metadata) != 2 {
		t.Errorf("got job metadata %v, want only the marker and the version", s.Metadata)
	}
	// Submitted, no heartbeat yet: starting, and Ray is asked but nothing is submitted again.
	e.now = e.now.Add(time.Minute)
	ensure(t, d, StateStarting)
	if subs, _ := e.jobs.calls(); len(subs) != 1 {
		t.Errorf("got %d submits while starting, want 1", len(subs))
	}
}

// A fresh heartbeat is trusted when Ray cannot answer the check of its job.
func TestEnsureLiveHeartbeatTrustedWhenRayCannotAnswer(t *testing.T) {
	e := newEnv(t)
	e.jobs.jobErr = fmt.Errorf("ray: down: %w", domain.ErrUnavailable)
	e.heartbeat(t, "v1", "whatever", e.now.Add(-5*time.Second))
	ensure(t, e.deployer("v1"), StateLive)
	if subs, stops := e.jobs.calls(); len(subs)+len(stops) != 0 {
		t.Errorf("got %d submits and %d stops, want none", len(subs), len(stops))
	}
	if dep := e.deploy(t); !reflect.DeepEqual(dep, records.Deploy{}) {
		t.Errorf("a live executor needs no deploy key write: %+v", dep)
	}
}

func TestEnsureResubmitsWhenRayLostOrEndedTheJob(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status ray.JobStatus // "" : Ray does not know the job (404)
	}{{"404", ""}, {"failed", ray.StatusFailed}, {"stopped", ray.StatusStopped}, {"succeeded", ray.StatusSucceeded}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			d := e.deployer("v1")
			ensure(t, d, StateDeployed)
			first := e.deploy(t)
			before := deployCounts()
			e.jobs.mu.Lock()
			if tc.status == "" {
				delete(e.jobs.jobs, first.SubmissionID)
			} else {
				e.jobs.jobs[first.SubmissionID] = tc.status
			}
			e.jobs.mu.Unlock()
			if tc.status == "" {
				// Unknown to Ray just after the key was written: its deployer is still
				// submitting, so nothing is submitted again yet.
				e.now = e.now.Add(SubmitGrace - time.Second)
				ensure(t, d, StateStarting)
				if subs, _ := e.jobs.calls(); len(subs) != 1 {
					t.Fatalf("got %d submits within the submit grace, want 1", len(subs))
				}
				e.now = e.now.Add(2 * time.Second)
			}
			ensure(t, d, StateDeployed)
			next := e.deploy(t)
			subs, stops := e.jobs.calls()
			if next.Generation != 2 || next.SubmissionID == first.SubmissionID || len(subs) != 2 ||
				subs[1].SubmissionID != next.SubmissionID || len(stops) != 0 {
				t.Errorf("got deploy %+v, %d submits, stops %v; want generation 2 submitted, nothing stopped", next, len(subs), stops)
			}
			want := map[string]int64{ReasonCrashed: 1} // Ray gave no end time: it counts from the submission
			if tc.status == "" {
				want = map[string]int64{ReasonLost: 1}
			}
			checkDeploys(t, before, want)
		})
	}
}

func TestEnsureReplacesAnExecutorThatNeverBeats(t *testing.T) {
	e := newEnv(t)
	d := e.deployer("v1")
	ensure(t, d, StateDeployed)
	first := e.deploy(t)
	e.jobs.mu.Lock()
	e.jobs.jobs[first.SubmissionID] = ray.StatusRunning
	e.jobs.mu.Unlock()
	e.now = e.now.Add(StartupGrace - time.Second)
	ensure(t, d, StateStarting)
	// Its heartbeat, fresh: live, whatever the grace.
	e.heartbeat(t, "v1", first.SubmissionID, e.now)
	e.now = e.now.Add(2 * time.Second)
	ensure(t, d, StateLive)
	// Its heartbeat gone stale beyond the grace: stopped and replaced.
	e.now = e.now.Add(time.Minute)
	ensure(t, d, StateDeployed)
	subs, stops := e.jobs.calls()
	next := e.deploy(t)
	if len(stops) != 1 || stops[0] != first.SubmissionID || len(subs) != 2 || next.Generation != 2 || subs[1].SubmissionID != next.SubmissionID {
		t.Errorf("got stops %v, %d submits, deploy %+v; want the stuck job stopped and generation 2 submitted", stops, len(subs), next)
	}
}

func TestEnsureRollsAnotherVersion(t *testing.T) {
	e := newEnv(t)
	ensure(t, e.deployer("old"), StateDeployed)
	old := e.deploy(t)
	e.heartbeat(t, "old", old.SubmissionID, e.now)
	// A new revision starts a little later, its version's claim with it. The old version
	// was deployed a moment ago: held, so that a version whose functions have gone is not
	// rolled away from and back at once.
	e.now = e.now.Add(time.Second)
	ensure(t, e.deployer("new"), StateHeld)
	if subs, _ := e.jobs.calls(); len(subs) != 1 {
		t.Fatalf("got %d submits while held, want the old one only", len(subs))
	}
	// Past the hold, the old executor still beating: roll.
	e.now = e.now.Add(RollHold + time.Second)
	e.heartbeat(t, "old", old.SubmissionID, e.now)
	ensure(t, e.deployer("new"), StateDeployed)
	dep := e.deploy(t)
	subs, stops := e.jobs.calls()
	if dep.Version != "new" || dep.Generation != 2 || !strings.HasPrefix(dep.SubmissionID, "ray-executor-new-2-") ||
		len(subs) != 2 || subs[1].Metadata["version"] != "new" || len(stops) != 0 {
		t.Errorf("got deploy %+v, %d submits, stops %v; want new submitted and the old left to drain", dep, len(subs), stops)
	}
	// The new executor has not beaten yet (the old one's heartbeat is not its own): starting.
	ensure(t, e.deployer("new"), StateStarting)
	if subs, _ := e.jobs.calls(); len(subs) != 2 {
		t.Errorf("got %d submits, want no third while the new executor starts", len(subs))
	}
}

// During a rollout the old revision's functions go on checking the executor: they defer
// to the newer version instead of rolling it back once per RollHold, however long both
// run, and log that once. When the new version's functions are gone (an aborted canary),
// its claim goes stale and the old version takes the executor back.
func TestEnsureOlderVersionDefersToTheNewerOne(t *testing.T) {
	e := newEnv(t)
	var logs bytes.Buffer
	old := e.deployer("b-old") // sorts after "a-new": the claims' times decide, not the names
	old.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	ensure(t, old, StateDeployed)
	first := e.deploy(t)
	e.now = e.now.Add(time.Minute)
	newer := e.deployer("a-new")
	ensure(t, newer, StateHeld)
	e.now = e.now.Add(RollHold)
	before := deployCounts()
	ensure(t, newer, StateDeployed)
	rolled := e.deploy(t)
	if rolled.Version != "a-new" || rolled.Previous != first.SubmissionID {
		t.Fatalf("deploy key after the roll: %+v", rolled)
	}
	checkDeploys(t, before, map[string]int64{ReasonRoll: 1})
	// An hour side by side, both checking every 5 s, the new executor beating.
	before = deployCounts()
	for end := e.now.Add(time.Hour); e.now.Before(end); e.now = e.now.Add(5 * time.Second) {
		e.heartbeat(t, "a-new", rolled.SubmissionID, e.now)
		ensure(t, old, StateDeferred)
		ensure(t, newer, StateLive)
	}
	if dep := e.deploy(t); dep.SubmissionID != rolled.SubmissionID {
		t.Fatalf("the old version took the executor back while the new one's functions ran: %+v", dep)
	}
	if n := strings.Count(logs.String(), "defers to it"); n != 1 {
		t.Errorf("logged deferring %d times, want once:\n%s", n, logs.String())
	}
	for _, want := range []string{`"deployed":"a-new"`, `"this_version":"b-old"`, "EXECUTOR_*"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the deferring line lacks %s:\n%s", want, logs.String())
		}
	}
	checkDeploys(t, before, map[string]int64{})
	// The old function cannot reach NATS for longer than ClaimStale while the new ones
	// can: its version's claim goes stale, yet it remembers when it first claimed, and
	// still defers.
	for end := e.now.Add(ClaimStale + time.Minute); e.now.Before(end); e.now = e.now.Add(5 * time.Second) {
		e.heartbeat(t, "a-new", rolled.SubmissionID, e.now)
		ensure(t, newer, StateLive)
	}
	ensure(t, old, StateDeferred)
	// The new version's functions stop (its claim is no longer refreshed) and its executor
	// stops beating: deferred until the claim is stale, then the old version rolls it back.
	c, _, err := e.store.Claim(context.Background(), "a-new")
	if err != nil {
		t.Fatal(err)
	}
	e.now = domain.ParseTime(c.Seen).Add(ClaimStale - time.Second)
	ensure(t, old, StateDeferred)
	e.now = e.now.Add(2 * time.Second)
	ensure(t, old, StateDeployed)
	if dep := e.deploy(t); dep.Version != "b-old" || dep.Previous != rolled.SubmissionID {
		t.Errorf("deploy key after the new version's functions left: %+v", dep)
	}
}

// Two versions whose functions start at the same moment: exactly one of them defers.
func TestEnsureTwoVersionsClaimingTogetherAgree(t *testing.T) {
	e := newEnv(t)
	x, y := e.deployer("x"), e.deployer("y")
	ensure(t, x, StateDeployed)
	ensure(t, y, StateHeld) // its claim is as old as x's
	cx, _, errx := e.store.Claim(context.Background(), "x")
	cy, _, erry := e.store.Claim(context.Background(), "y")
	if errx != nil || erry != nil || cx.FirstSeen != cy.FirstSeen {
		t.Fatalf("claims %+v %v, %+v %v: want the same first sighting", cx, errx, cy, erry)
	}
	e.now = e.now.Add(RollHold + time.Second)
	ensure(t, y, StateDeployed) // the greater name wins the tie
	for i := 0; i < 3; i++ {
		ensure(t, x, StateDeferred)
		ensure(t, y, StateStarting)
		e.now = e.now.Add(30 * time.Second)
	}
	if dep := e.deploy(t); dep.Version != "y" || dep.Generation != 2 {
		t.Errorf("deploy key %+v, want y's second generation", dep)
	}
}

// The claim costs a write per ClaimEvery per process, not one per check, and keeps the
// time its version first appeared while it stays fresh; a version whose functions all
// left and came back (a rollback after a finished rollout) is new again, and wins.
func TestEnsureClaimsOncePerInterval(t *testing.T) {
	e := newEnv(t)
	d := e.deployer("v1")
	ensure(t, d, StateDeployed)
	dep := e.deploy(t)
	start := e.now
	claim := func() (records.Claim, uint64) {
		t.Helper()
		c, rev, err := e.store.Claim(context.Background(), "v1")
		if err != nil {
			t.Fatal(err)
		}
		return c, rev
	}
	c, rev := claim()
	if c.FirstSeen != domain.FormatTime(start) || c.Seen != c.FirstSeen {
		t.Fatalf("claim after the first check: %+v", c)
	}
	for i := 0; i < 11; i++ {
		e.now = e.now.Add(5 * time.Second)
		e.heartbeat(t, "v1", dep.SubmissionID, e.now)
		ensure(t, d, StateLive)
	}
	if c2, rev2 := claim(); rev2 != rev || c2 != c {
		t.Errorf("claim rewritten within ClaimEvery: %+v (rev %d, was %d)", c2, rev2, rev)
	}
	e.now = e.now.Add(5 * time.Second)
	e.heartbeat(t, "v1", dep.SubmissionID, e.now)
	ensure(t, d, StateLive)
	if c2, rev2 := claim(); rev2 == rev || c2.Seen != domain.FormatTime(e.now) || c2.FirstSeen != c.FirstSeen {
		t.Errorf("claim after ClaimEvery: %+v (rev %d, was %d), want seen now, first seen kept", c2, rev2, rev)
	}
	// v2 rolls v1; every v1 function goes; later v1 is deployed again (a rollback): its
	// stale claim starts afresh, so v1 is now the newer version and v2's functions defer.
	e.now = e.now.Add(time.Minute)
	v2 := e.deployer("v2")
	ensure(t, v2, StateDeployed)
	rolled := e.deploy(t)
	e.now = e.now.Add(ClaimStale + time.Minute)
	e.heartbeat(t, "v2", rolled.SubmissionID, e.now)
	ensure(t, v2, StateLive)
	if c2, _ := claim(); c2.FirstSeen != c.FirstSeen {
		t.Fatalf("v1's stale claim changed before a v1 function came back: %+v", c2)
	}
	ensure(t, e.deployer("v1"), StateDeployed)
	if c2, _ := claim(); c2.FirstSeen != domain.FormatTime(e.now) {
		t.Errorf("v1 came back with first sighting %s, want now (%s): it would defer to v2", c2.FirstSeen, domain.FormatTime(e.now))
	}
	e.now = e.now.Add(records.HeartbeatStale) // v2's executor drained and stopped beating
	ensure(t, v2, StateDeferred)
}

// Many functions of one version starting together (a scale-up) all claim without error
// and agree on when the version first appeared.
func TestEnsureConcurrentClaimsOfOneVersion(t *testing.T) {
	e := newEnv(t)
	ds := make([]*Deployer, 8)
	errs := make(chan error, len(ds))
	var wg sync.WaitGroup
	for i := range ds {
		ds[i] = e.deployer("v1")
		wg.Add(1)
		go func(d *Deployer) {
			defer wg.Done()
			_, err := d.Ensure(context.Background())
			errs <- err
		}(ds[i])
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Ensure: %v", err)
		}
	}
	c, _, err := e.store.Claim(context.Background(), "v1")
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range ds {
		if domain.FormatTime(d.first) != c.FirstSeen {
			t.Errorf("deployer %d took the version as first seen at %s, the claim says %s", i, domain.FormatTime(d.first), c.FirstSeen)
		}
	}
}

// The deployers of the running version rewrite the deploy key, unchanged, once per
// DeployRefresh, so that the bucket's MaxAge (RETENTION) never expires it under an
// executor that runs for days; others leave it alone.
func TestEnsureKeepsTheDeployKeyWritten(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	d := e.deployer("v1")
	ensure(t, d, StateDeployed)
	dep, rev, err := e.store.Deploy(ctx)
	if err != nil {
		t.Fatal(err)
	}
	check := func(wantRewritten bool) {
		t.Helper()
		got, rev2, err := e.store.Deploy(ctx)
		if err != nil || !reflect.DeepEqual(got, dep) {
			t.Fatalf("deploy key %+v, %v: want it unchanged, %+v", got, err, dep)
		}
		if (rev2 != rev) != wantRewritten {
			t.Fatalf("deploy key at revision %d, was %d: want rewritten %v", rev2, rev, wantRewritten)
		}
		rev = rev2
	}
	for end := e.now.Add(DeployRefresh - 10*time.Second); e.now.Before(end); e.now = e.now.Add(5 * time.Second) {
		e.heartbeat(t, "v1", dep.SubmissionID, e.now)
		ensure(t, d, StateLive)
	}
	check(false)
	e.now = e.now.Add(10 * time.Second)
	e.heartbeat(t, "v1", dep.SubmissionID, e.now)
	ensure(t, d, StateLive)
	check(true)
	// Another process of the same version, just started, rewrites it once too; one of
	// another version does not.
	ensure(t, e.deployer("v1"), StateLive)
	check(true)
	if err := e.deployer("v2").keepDeployKey(ctx, e.now); err != nil {
		t.Fatal(err)
	}
	check(false)
}

// TestSettingsChangeRollsTheExecutor: the executor reads its settings only when deployed,
// so functions started with a raised EXECUTOR_MAX_REPLICAS must roll it, as a new payload
// does, and submit it with the new value; functions with the same settings must not.
func TestSettingsChangeRollsTheExecutor(t *testing.T) {
	e := newEnv(t)
	ev := natsbus.Config{URL: "nats://n:4222", EventsStream: natsbus.DefaultEventsStream}
	build := func(s Settings) *Deployer {
		d := NewDeployer(nil, e.store, s, ev, time.Minute, quiet)
		d.Jobs, d.WorkingDirs, d.Now = e.jobs, fakeWD{}, func() time.Time { return e.now }
		return d
	}
	before := Settings{MinReplicas: 1, MaxReplicas: 2, ReplicaConcurrency: 8, MaxDeliveries: 3, NATSURL: "nats://n:4222"}
	ensure(t, build(before), StateDeployed)
	old := e.deploy(t)
	e.heartbeat(t, old.Version, old.SubmissionID, e.now)
	e.now = e.now.Add(RollHold + time.Second)
	e.heartbeat(t, old.Version, old.SubmissionID, e.now)
	ensure(t, build(before), StateLive) // another replica of the same revision

	after := before
	after.MaxReplicas = 6
	ensure(t, build(after), StateDeployed)
	dep := e.deploy(t)
	subs, _ := e.jobs.calls()
	if dep.Version == old.Version || dep.Generation != 2 || len(subs) != 2 {
		t.Fatalf("got deploy %+v after %+v and %d submits; want a new version, generation 2, two submits", dep, old, len(subs))
	}
	envVars, _ := subs[1].RuntimeEnv["env_vars"].(map[string]string)
	if envVars["EXECUTOR_MAX_REPLICAS"] != "6" || envVars["EXECUTOR_VERSION"] != dep.Version {
		t.Errorf("the rolled executor's environment: got EXECUTOR_MAX_REPLICAS=%q EXECUTOR_VERSION=%q, want 6 and %s",
			envVars["EXECUTOR_MAX_REPLICAS"], envVars["EXECUTOR_VERSION"], dep.Version)
	}
}

func TestEnsureRayErrorsAreReturned(t *testing.T) {
	e := newEnv(t)
	d := e.deployer("v1")
	ensure(t, d, StateDeployed)
	e.jobs.jobErr = fmt.Errorf("ray: %w", domain.ErrUnavailable)
	if _, err := d.Ensure(context.Background()); !errors.Is(err, domain.ErrUnavailable) {
		t.Errorf("got %v, want Ray's ErrUnavailable", err)
	}
	if subs, _ := e.jobs.calls(); len(subs) != 1 || e.deploy(t).Generation != 1 {
		t.Errorf("a Ray that does not answer must not cause a resubmit: %d submits", len(subs))
	}
}

func TestConcurrentDeployersSubmitOnce(t *testing.T) {
	e := newEnv(t)
	e.jobs.delay = 50 * time.Millisecond
	a, b := e.deployer("v1"), e.deployer("v1")
	var wg sync.WaitGroup
	states := make([]State, 2)
	errs := make([]error, 2)
	for i, d := range []*Deployer{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			states[i], errs[i] = d.Ensure(context.Background())
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	subs, _ := e.jobs.calls()
	got := fmt.Sprint(states)
	if len(subs) != 1 || (got != "[deployed starting]" && got != "[starting deployed]") {
		t.Errorf("got %d submits and states %s, want exactly one submit", len(subs), got)
	}
	if dep := e.deploy(t); dep.Generation != 1 || dep.SubmissionID != subs[0].SubmissionID {
		t.Errorf("deploy key %+v does not name the one submission %s", dep, subs[0].SubmissionID)
	}
}

// A deployer that finds the deploy key written by another one still submitting (Ray does
// not know the job yet) waits for it instead of submitting a second executor of the same
// version.
func TestEnsureWaitsForAnotherDeployersSubmit(t *testing.T) {
	e := newEnv(t)
	gate := make(chan struct{})
	e.jobs.gate = gate
	a, b := e.deployer("v1"), e.deployer("v1")
	done := make(chan error, 1)
	go func() {
		st, err := a.Ensure(context.Background())
		if err == nil && st != StateDeployed {
			err = fmt.Errorf("got %q, want deployed", st)
		}
		done <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); e.deploy(t).SubmissionID == ""; {
		if time.Now().After(deadline) {
			t.Fatal("the first deployer never wrote the deploy key")
		}
		time.Sleep(5 * time.Millisecond)
	}
	st, err := b.Ensure(context.Background())
	close(gate)
	if err != nil || st != StateStarting {
		t.Errorf("the second deployer: got %q, %v, want starting", st, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	subs, _ := e.jobs.calls()
	if len(subs) != 1 || e.deploy(t).Generation != 1 {
		t.Errorf("got %d submits and generation %d, want one submit of generation 1", len(subs), e.deploy(t).Generation)
	}
}

// A process that outlived its node or head goes on beating for a job the cluster no longer
// has: found at the first check (then every VerifyEvery), it is replaced by a new
// generation, whose deploy key makes the orphan exit. A running job's heartbeat is checked
// once per VerifyEvery, not on every Ensure.
func TestEnsureReplacesAnOrphanExecutor(t *testing.T) {
	e := newEnv(t)
	d := e.deployer("v1")
	e.jobs.jobs = map[string]ray.JobStatus{"ray-executor-live": ray.StatusRunning}
	e.heartbeat(t, "v1", "ray-executor-live", e.now)
	for range 3 {
		ensure(t, d, StateLive)
	}
	e.jobs.mu.Lock()
	e.jobs.jobs = nil // the head restarted: it knows no job
	e.jobs.mu.Unlock()
	e.now = e.now.Add(VerifyEvery / 2)
	e.heartbeat(t, "v1", "ray-executor-live", e.now)
	ensure(t, d, StateLive) // checked less than VerifyEvery ago
	if subs, _ := e.jobs.calls(); len(subs) != 0 {
		t.Fatalf("submitted %d within VerifyEvery of a check", len(subs))
	}
	e.now = e.now.Add(VerifyEvery)
	e.heartbeat(t, "v1", "ray-executor-live", e.now) // the orphan still beats
	ensure(t, d, StateDeployed)
	subs, _ := e.jobs.calls()
	dep := e.deploy(t)
	if len(subs) != 1 || subs[0].SubmissionID != dep.SubmissionID || dep.SubmissionID == "ray-executor-live" {
		t.Errorf("got submits %v and deploy key %+v, want one new generation named in the key", subs, dep)
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range map[int]time.Duration{0: 0, 1: 0, 2: 15 * time.Second, 3: 30 * time.Second,
		4: time.Minute, 5: 2 * time.Minute, 6: 4 * time.Minute, 7: 5 * time.Minute, 40: 5 * time.Minute} {
		if got := Backoff(n); got != want {
			t.Errorf("Backoff(%d) = %s, want %s", n, got, want)
		}
	}
}

// An executor that crashes soon after every start (a PAYLOAD_NATS_URL the cluster cannot
// reach, a payload failing on import) is submitted again at once the first time, then after
// 15 s, 30 s, ... from its end, with one log line per wait; a generation that ran past
// CrashWindow ends the run of crashes.
func TestEnsureBacksOffAnExecutorThatKeepsCrashing(t *testing.T) {
	e := newEnv(t)
	before := deployCounts()
	var logs strings.Builder
	d := e.deployer("v1")
	d.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	ensure(t, d, StateDeployed)
	crash := func() records.Deploy { // the current generation fails 10 s after its submission
		t.Helper()
		dep := e.deploy(t)
		end := domain.ParseTime(dep.At).Add(10 * time.Second)
		e.jobs.end(dep.SubmissionID, ray.StatusFailed, end)
		e.now = end.Add(time.Second)
		return dep
	}
	crash()
	ensure(t, d, StateDeployed) // the first crash: at once
	if dep := e.deploy(t); dep.Generation != 2 || dep.Failures != 1 {
		t.Fatalf("after one crash: deploy %+v, want generation 2 with 1 failure", dep)
	}
	for _, step := range []struct {
		gen  int
		wait time.Duration
	}{{3, 15 * time.Second}, {4, 30 * time.Second}, {5, time.Minute}} {
		crashed := crash()
		end := e.now.Add(-time.Second)
		for range 3 {
			ensure(t, d, StateBackoff)
		}
		e.now = end.Add(step.wait - time.Millisecond)
		ensure(t, d, StateBackoff)
		if dep := e.deploy(t); dep.SubmissionID != crashed.SubmissionID {
			t.Fatalf("submitted generation %d during its backoff", dep.Generation)
		}
		e.now = end.Add(step.wait)
		ensure(t, d, StateDeployed)
		if dep := e.deploy(t); dep.Generation != step.gen || dep.Failures != step.gen-1 {
			t.Fatalf("after the backoff: deploy %+v, want generation %d with %d failures", dep, step.gen, step.gen-1)
		}
	}
	if !strings.Contains(logs.String(), `how="Ray reports it FAILED: "`) {
		t.Errorf("the backoff's log line does not say how the job ended:\n%s", logs.String())
	}
	if n := strings.Count(logs.String(), "crashed again soon after it started"); n != 3 {
		t.Errorf("logged the backoff %d times, want once per crashed generation (3):\n%s", n, logs.String())
	}
	// Generation 5 runs past CrashWindow, then ends: no longer a crash, submitted at once.
	dep := e.deploy(t)
	end := domain.ParseTime(dep.At).Add(CrashWindow + time.Minute)
	e.jobs.end(dep.SubmissionID, ray.StatusFailed, end)
	e.now = end.Add(time.Second)
	ensure(t, d, StateDeployed)
	if dep := e.deploy(t); dep.Generation != 6 || dep.Failures != 0 {
		t.Errorf("after a long run: deploy %+v, want generation 6 with no failures", dep)
	}
	if subs, _ := e.jobs.calls(); len(subs) != 6 {
		t.Errorf("got %d submits, want 6 (one per generation)", len(subs))
	}
	checkDeploys(t, before, map[string]int64{ReasonFirst: 1, ReasonCrashed: 4, ReasonEnded: 1})
}

func deployCounts() map[string]int64 {
	m := map[string]int64{}
	for i, r := range deployReasons {
		m[r] = deploys[i].Load()
	}
	return m
}

// checkDeploys checks how much each reason's count of rex.executor.deploys grew since
// before (reasons that did not grow left out of want).
func checkDeploys(t *testing.T, before, want map[string]int64) {
	t.Helper()
	got := map[string]int64{}
	for r, n := range deployCounts() {
		if n != before[r] {
			got[r] = n - before[r]
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rex.executor.deploys grew by %v, want %v", got, want)
	}
}

// An executor that never writes a heartbeat is stopped after StartupGrace; a second one in a
// row is a crash too, so the third generation waits its backoff from the stop.
func TestEnsureBacksOffAnExecutorThatNeverBeats(t *testing.T) {
	e := newEnv(t)
	before := deployCounts()
	var logs strings.Builder
	d := e.deployer("v1")
	d.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	ensure(t, d, StateDeployed)
	for gen := 2; gen <= 3; gen++ {
		dep := e.deploy(t)
		e.jobs.end(dep.SubmissionID, ray.StatusRunning, time.Time{})
		e.now = domain.ParseTime(dep.At).Add(StartupGrace + time.Second)
		want := StateDeployed
		if gen == 3 {
			want = StateBackoff
		}
		ensure(t, d, want)
	}
	_, stops := e.jobs.calls()
	stoppedAt := e.now
	if len(stops) != 2 || e.deploy(t).Generation != 2 {
		t.Fatalf("got stops %v and generation %d, want both stuck jobs stopped and generation 2 still named", stops, e.deploy(t).Generation)
	}
	if !strings.Contains(logs.String(), `"how":"stopped: no heartbeat within 3m0s of its submission","crashes_in_a_row":2`) {
		t.Errorf("the backoff's log line does not say the job was stopped for want of a heartbeat:\n%s", logs.String())
	}
	e.jobs.end(stops[1], ray.StatusStopped, stoppedAt) // Ray's record of the stop
	e.now = stoppedAt.Add(Backoff(2) - time.Second)
	ensure(t, d, StateBackoff)
	e.now = stoppedAt.Add(Backoff(2))
	ensure(t, d, StateDeployed)
	if dep := e.deploy(t); dep.Generation != 3 || dep.Failures != 2 {
		t.Errorf("deploy %+v, want generation 3 after 2 failures", dep)
	}
	// The first stuck job was replaced at once; the second, after its backoff, as Ray's
	// record of the stop: crashed.
	checkDeploys(t, before, map[string]int64{ReasonFirst: 1, ReasonStuck: 1, ReasonCrashed: 1})
}

// Ended earlier generations are deleted from Ray when a later one is deployed, so Ray's job
// table and the head's disk keep at most the running executor, the one it replaced (its log
// says why it ended) and those still draining.
func TestEnsureDeletesEarlierGenerationsFromRay(t *testing.T) {
	e := newEnv(t)
	before := deployCounts()
	v1 := e.deployer("v1")
	ensure(t, v1, StateDeployed)
	gen1 := e.deploy(t)
	e.jobs.end(gen1.SubmissionID, ray.StatusFailed, e.now.Add(time.Second))
	e.now = e.now.Add(2 * time.Second)
	ensure(t, v1, StateDeployed)
	gen2 := e.deploy(t)
	if gen2.Previous != gen1.SubmissionID || len(gen2.Retired) != 0 || !e.jobs.has(gen1.SubmissionID) {
		t.Fatalf("generation 2: %+v; want generation 1 named as previous and kept in Ray for its log", gen2)
	}
	// Generation 2 runs, is rolled to v2 and drains: generation 1 is deleted, 2 kept.
	e.jobs.end(gen2.SubmissionID, ray.StatusRunning, time.Time{})
	e.now = e.now.Add(RollHold + time.Second)
	e.heartbeat(t, "v1", gen2.SubmissionID, e.now)
	ensure(t, e.deployer("v2"), StateDeployed)
	gen3 := e.deploy(t)
	if e.jobs.has(gen1.SubmissionID) || !e.jobs.has(gen2.SubmissionID) || gen3.Previous != gen2.SubmissionID || len(gen3.Retired) != 0 {
		t.Fatalf("after the roll: deploy %+v, Ray has generation 1: %v, 2: %v; want 1 deleted, 2 kept as previous",
			gen3, e.jobs.has(gen1.SubmissionID), e.jobs.has(gen2.SubmissionID))
	}
	// Another roll while generation 2 still drains: it cannot be deleted yet, so it is retired.
	e.jobs.end(gen3.SubmissionID, ray.StatusRunning, time.Time{})
	e.now = e.now.Add(RollHold + time.Second)
	ensure(t, e.deployer("v3"), StateDeployed)
	gen4 := e.deploy(t)
	if !reflect.DeepEqual(gen4.Retired, []string{gen2.SubmissionID}) || gen4.Previous != gen3.SubmissionID {
		t.Fatalf("deploy %+v, want generation 2 (still running) retired and 3 previous", gen4)
	}
	// Both drained; Ray does not answer a delete for a moment: all are kept for the next deploy.
	e.jobs.end(gen2.SubmissionID, ray.StatusSucceeded, e.now)
	e.jobs.end(gen3.SubmissionID, ray.StatusSucceeded, e.now)
	e.jobs.end(gen4.SubmissionID, ray.StatusFailed, e.now.Add(time.Second))
	e.jobs.deleteErr = fmt.Errorf("ray: %w", domain.ErrUnavailable)
	e.now = e.now.Add(2 * time.Second)
	v3 := e.deployer("v3")
	ensure(t, v3, StateDeployed)
	gen5 := e.deploy(t)
	if !reflect.DeepEqual(gen5.Retired, []string{gen2.SubmissionID, gen3.SubmissionID}) {
		t.Fatalf("deploy %+v, want generations 2 and 3 still to delete", gen5)
	}
	e.jobs.deleteErr = nil
	e.jobs.end(gen5.SubmissionID, ray.StatusFailed, e.now.Add(CrashWindow+time.Minute))
	e.now = e.now.Add(CrashWindow + 2*time.Minute)
	ensure(t, v3, StateDeployed)
	gen6 := e.deploy(t)
	for _, g := range []records.Deploy{gen2, gen3, gen4} {
		if e.jobs.has(g.SubmissionID) {
			t.Errorf("generation %d is still in Ray", g.Generation)
		}
	}
	if len(gen6.Retired) != 0 || gen6.Previous != gen5.SubmissionID || !e.jobs.has(gen5.SubmissionID) {
		t.Errorf("deploy %+v, want nothing left to delete and generation 5 kept as previous", gen6)
	}
	want := map[string]int64{ReasonFirst: 1, ReasonCrashed: 2, ReasonRoll: 2, ReasonEnded: 1}
	checkDeploys(t, before, want)
}

// The deploy key remembers at most maxRetired jobs to delete, forgetting the oldest.
func TestEnsureRetiredJobsAreBounded(t *testing.T) {
	e := newEnv(t)
	d := e.deployer("v1")
	ensure(t, d, StateDeployed)
	dep, rev, err := e.store.Deploy(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range maxRetired + 4 {
		id := fmt.Sprintf("ray-executor-old-%d", i)
		dep.Retired = append(dep.Retired, id)
		e.jobs.end(id, ray.StatusRunning, time.Time{})
	}
	if err := e.store.SetDeploy(context.Background(), dep, rev); err != nil {
		t.Fatal(err)
	}
	e.jobs.end(dep.SubmissionID, ray.StatusFailed, e.now.Add(time.Second))
	e.now = e.now.Add(2 * time.Second)
	ensure(t, d, StateDeployed)
	got := e.deploy(t).Retired
	if len(got) != maxRetired || got[0] != "ray-executor-old-4" || got[maxRetired-1] != "ray-executor-old-19" {
		t.Errorf("got retired %v, want the newest %d of the 20", got, maxRetired)
	}
}

func TestMessageTail(t *testing.T) {
	short := "Job was intentionally stopped."
	if got := messageTail(short); got != short {
		t.Errorf("a short message: got %q", got)
	}
	long := strings.Repeat("é", 2000) + "NATS at x not reachable"
	got := messageTail(long)
	if !strings.HasPrefix(got, "…") || !strings.HasSuffix(got, "NATS at x not reachable") || len(got) > maxMessageLog+len("…") ||
		!utf8.ValidString(got) {
		t.Errorf("a long message: got %d bytes, valid UTF-8 %v, %q...", len(got), utf8.ValidString(got), got[:20])
	}
}

// The driver gives up on NATS at start (the payload's START_NATS_SECONDS) before the
// deployers give up on the driver (StartupGrace): otherwise a driver that cannot reach NATS
// is stopped as stuck, and Ray's job message never says why.
func TestThePayloadsStartBoundIsBelowStartupGrace(t *testing.T) {
	src, err := payload.Source("executor.py")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^START_NATS_SECONDS = ([0-9.]+)$`).FindSubmatch(src)
	if m == nil {
		t.Fatal("executor.py has no START_NATS_SECONDS = <seconds> line")
	}
	secs, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	if bound := time.Duration(secs * float64(time.Second)); bound <= 0 || bound >= StartupGrace-30*time.Second {
		t.Errorf("START_NATS_SECONDS = %s, want it positive and at least 30 s below StartupGrace (%s): "+
			"ray.init and the job's start come before it", bound, StartupGrace)
	}
}
