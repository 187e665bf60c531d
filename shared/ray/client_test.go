package ray

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// duplicateBody is what Ray 2.60 answers (HTTP 500) to a reused submission_id.
const duplicateBody = `Traceback (most recent call last):
  File "/ray/dashboard/modules/job/job_head.py", line 419, in submit_job
    resp = await job_agent_client.submit_job_internal(submit_request)
RuntimeError: Request failed with status code 400: Traceback (most recent call last):
  File "/ray/dashboard/modules/job/job_manager.py", line 553, in submit_job
    raise ValueError(
ValueError: Job with submission_id dup-1 already exists. Please use a different submission_id.
.
`

// stub starts an httptest server running h and a Client for it.
func stub(t *testing.T, cfg Config, h http.HandlerFunc) *Client {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	cfg.Address = srv.URL
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: got error %v, want nil", err)
	}
	return c
}

// reply returns a handler answering status and body.
func reply(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// hang returns a handler that answers only after d or when the client goes away.
func hang(d time.Duration) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(d):
			io.WriteString(w, `{"version":"4"}`)
		case <-r.Context().Done():
		}
	}
}

// closedAddress returns the address of a listener that has been closed, so connecting to
// it is refused.
func closedAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func sentinelName(err error) string {
	for _, s := range []struct {
		err  error
		name string
	}{
		{domain.ErrInvalid, "ErrInvalid"},
		{domain.ErrNotFound, "ErrNotFound"},
		{domain.ErrAlreadyExists, "ErrAlreadyExists"},
		{domain.ErrConflict, "ErrConflict"},
		{domain.ErrUnavailable, "ErrUnavailable"},
		{domain.ErrUnauthenticated, "ErrUnauthenticated"},
		{domain.ErrDeadline, "ErrDeadline"},
		{context.Canceled, "context.Canceled"},
	} {
		if errors.Is(err, s.err) {
			return s.name
		}
	}
	if err == nil {
		return "nil"
	}
	return "no sentinel"
}

func TestErrorMapping(t *testing.T) {
	t.Parallel()
	getJob := func(ctx context.Context, c *Client) error { _, err := c.Job(ctx, "job-1"); return err }
	submit := func(ctx context.Context, c *Client) error {
		_, err := c.Submit(ctx, SubmitRequest{Entrypoint: "true", SubmissionID: "dup-1"})
		return err
	}
	tests := []struct {
		name     string
		handler  http.HandlerFunc
		address  string // overrides the stub's address when set
		timeout  time.Duration
		ctx      func() (context.Context, context.CancelFunc)
		call     func(context.Context, *Client) error
		want     error
		notWant  error  // must not match, when set
		wantText string // must appear in the message, when set
	}{
		{name: "404", handler: reply(404, "Job job-1 does not exist"), call: getJob,
			want: domain.ErrNotFound, wantText: "Job job-1 does not exist"},
		{name: "500 duplicate submission", handler: reply(500, duplicateBody), call: submit,
			want: domain.ErrAlreadyExists, notWant: domain.ErrUnavailable,
			wantText: "ValueError: Job with submission_id dup-1 already exists. Please use a different submission_id."},
		{name: "409", handler: reply(409, "conflict"), call: submit, want: domain.ErrAlreadyExists},
		{name: "500 no agent", handler: reply(500, "No available agent to submit job, please try again later."),
			call: submit, want: domain.ErrUnavailable, wantText: "No available agent"},
		{name: "500 other", handler: reply(500, "500 Internal Server Error\n\nServer got itself in trouble"),
			call: getJob, want: domain.ErrUnavailable, wantText: "HTTP 500: 500 Internal Server Error Server got itself in trouble"},
		{name: "502", handler: reply(502, "bad gateway"), call: getJob, want: domain.ErrUnavailable},
		{name: "503", handler: reply(503, ""), call: getJob, want: domain.ErrUnavailable, wantText: "HTTP 503"},
		{name: "429", handler: reply(429, "slow down"), call: getJob, want: domain.ErrUnavailable},
		{name: "401", handler: reply(401, "no token"), call: getJob, want: domain.ErrUnauthenticated},
		{name: "403", handler: reply(403, "forbidden"), call: getJob, want: domain.ErrUnauthenticated},
		{name: "400", handler: reply(400, "TypeError: JobSubmitRequest.__init__() got an unexpected keyword argument 'x'"),
			call: submit, want: domain.ErrInvalid, wantText: "unexpected keyword argument"},
		{name: "405", handler: reply(405, "method not allowed"), call: getJob, want: domain.ErrInvalid},
		{name: "connection refused", address: closedAddress(t), call: getJob, want: domain.ErrUnavailable},
		{name: "unresolvable host", address: "http://ray-head.invalid:8265", call: getJob, want: domain.ErrUnavailable},
		{name: "per-call timeout", handler: hang(5 * time.Second), timeout: 50 * time.Millisecond,
			call: getJob, want: domain.ErrDeadline, notWant: context.Canceled, wantText: "per-call timeout"},
		{name: "caller deadline", handler: hang(5 * time.Second),
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 50*time.Millisecond)
			},
			call: getJob, want: domain.ErrDeadline, notWant: context.Canceled, wantText: "caller's deadline"},
		{name: "caller cancellation", handler: hang(5 * time.Second),
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(50*time.Millisecond, cancel)
				return ctx, cancel
			},
			call: getJob, want: context.Canceled, notWant: domain.ErrDeadline},
		{name: "already cancelled", handler: reply(200, `{}`),
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx, cancel
			},
			call: getJob, want: context.Canceled},
		{name: "malformed JSON", handler: reply(200, `{"status": "RUNN`), call: getJob, want: domain.ErrUnavailable,
			wantText: "unparsable"},
		{name: "wrong JSON shape", handler: reply(200, `["a"]`), call: getJob, want: domain.ErrUnavailable},
		{name: "submit without submission_id", handler: reply(200, `{"job_id": null}`), call: submit,
			want: domain.ErrUnavailable},
		{name: "delete answers false", handler: reply(200, `{"deleted": false}`),
			call: func(ctx context.Context, c *Client) error { return c.Delete(ctx, "job-1") },
			want: domain.ErrUnavailable},
		{name: "delete non-terminal", handler: reply(500,
			"RuntimeError: Attempted to delete job 'job-1', but it is in a non-terminal state PENDING."),
			call: func(ctx context.Context, c *Client) error { return c.Delete(ctx, "job-1") },
			want: domain.ErrUnavailable, wantText: "non-terminal state"},
		{name: "package check 500", handler: reply(500, "boom"),
			call: func(ctx context.Context, c *Client) error { _, err := c.PackageExists(ctx, "p.zip"); return err },
			want: domain.ErrUnavailable},
		{name: "upload 413", handler: reply(413, "too large"),
			call: func(ctx context.Context, c *Client) error { return c.UploadPackage(ctx, "p.zip", []byte("PK")) },
			want: domain.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := Config{Timeout: tt.timeout}
			var c *Client
			if tt.address != "" {
				cfg.Address = tt.address
				var err error
				if c, err = New(cfg); err != nil {
					t.Fatalf("New: got error %v, want nil", err)
				}
			} else {
				c = stub(t, cfg, tt.handler)
			}
			ctx, cancel := context.Background(), context.CancelFunc(func() {})
			if tt.ctx != nil {
				ctx, cancel = tt.ctx()
			}
			defer cancel()

			start := time.Now()
			err := tt.call(ctx, c)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got error %v (%s), want one wrapping %v", err, sentinelName(err), tt.want)
			}
			if tt.notWant != nil && errors.Is(err, tt.notWant) {
				t.Errorf("got error %v wrapping %v, want it not to", err, tt.notWant)
			}
			if !strings.HasPrefix(err.Error(), "ray: ") {
				t.Errorf("got message %q, want prefix %q", err.Error(), "ray: ")
			}
			if tt.wantText != "" && !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("got message %q, want it to contain %q", err.Error(), tt.wantText)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("got a call lasting %s, want it to end promptly", d)
			}
		})
	}
}

func TestErrorMessageCapped(t *testing.T) {
	t.Parallel()
	c := stub(t, Config{}, reply(500, strings.Repeat("x", 10000)))
	_, err := c.Job(context.Background(), "j")
	if !errors.Is(err, domain.ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	if n := len(err.Error()); n > maxMessage+100 {
		t.Errorf("got a %d-byte message, want at most %d", n, maxMessage+100)
	}
}

func TestSummarize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		body, want string
	}{
		{"", ""},
		{"  Job x does not exist\n", "Job x does not exist"},
		{duplicateBody, "ValueError: Job with submission_id dup-1 already exists. Please use a different submission_id."},
		{"a\n\n  b\tc", "a b c"},
		{strings.Repeat("é", 300), strings.Repeat("é", 256) + "…"},
	}
	for _, tt := range tests {
		if got := summarize([]byte(tt.body)); got != tt.want {
			t.Errorf("summarize(%.40q): got %q, want %q", tt.body, got, tt.want)
		}
	}
}

func TestNewRejectsBadAddresses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		address  string
		wantText string
	}{
		{"", "dashboard"},
		{"   ", "dashboard"},
		{"ray://127.0.0.1:10001", "10001"},
		{"RAY://head:10001", "Python"},
		{"127.0.0.1:8265", "dashboard"},
		{"localhost:8265", "dashboard"},
		{"ftp://head:8265", "dashboard"},
		{"http://", "dashboard"},
		{"http://[::1", "dashboard"},
		{"http://head:8265/?x=1", "dashboard"},
		{"http://user:pw@head:8265", "dashboard"},
	}
	for _, tt := range tests {
		c, err := New(Config{Address: tt.address})
		if err == nil {
			t.Errorf("New(%q): got client %v, want an error", tt.address, c)
			continue
		}
		if !errors.Is(err, domain.ErrInvalid) {
			t.Errorf("New(%q): got error %v, want one wrapping ErrInvalid", tt.address, err)
		}
		if !strings.Contains(err.Error(), tt.wantText) || !strings.Contains(err.Error(), ":8265") {
			t.Errorf("New(%q): got message %q, want it to mention %q and the dashboard address", tt.address, err, tt.wantText)
		}
	}
	if _, err := New(Config{Address: "http://head:8265", Timeout: -time.Second}); !errors.Is(err, domain.ErrInvalid) {
		t.Errorf("New with negative timeout: got %v, want ErrInvalid", err)
	}
}

func TestNewDefaults(t *testing.T) {
	t.Parallel()
	c, err := New(Config{Address: "HTTP://head:8265/"})
	if err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	if c.base != "http://head:8265" {
		t.Errorf("got base %q, want %q", c.base, "http://head:8265")
	}
	if c.timeout != DefaultTimeout {
		t.Errorf("got timeout %s, want %s", c.timeout, DefaultTimeout)
	}
	if _, ok := c.hc.Transport.(*otelhttp.Transport); !ok {
		t.Fatalf("got transport %T, want the traced one", c.hc.Transport)
	}
	tr := newTransport()
	if tr.MaxIdleConnsPerHost != 32 || tr.DisableKeepAlives {
		t.Errorf("got MaxIdleConnsPerHost %d, keep-alives disabled %v; want 32, false", tr.MaxIdleConnsPerHost, tr.DisableKeepAlives)
	}
	own := &http.Client{}
	c, _ = New(Config{Address: "https://head", HTTPClient: own})
	if c.hc != own {
		t.Errorf("got HTTP client %p, want the configured %p", c.hc, own)
	}
}

func TestBearerToken(t *testing.T) {
	t.Parallel()
	for _, token := range []string{"", "s3cret"} {
		var got atomic.Value
		c := stub(t, Config{Token: token}, func(w http.ResponseWriter, r *http.Request) {
			got.Store(r.Header.Values("Authorization"))
			io.WriteString(w, `{"version":"4","ray_version":"2.60.0"}`)
		})
		if _, err := c.Version(context.Background()); err != nil {
			t.Fatalf("Version: got %v, want nil", err)
		}
		h := got.Load().([]string)
		switch {
		case token == "" && len(h) != 0:
			t.Errorf("without token: got Authorization %q, want none", h)
		case token != "" && (len(h) != 1 || h[0] != "Bearer "+token):
			t.Errorf("with token: got Authorization %q, want [%q]", h, "Bearer "+token)
		}
	}
}

// TestRoutes checks method, escaped path and body of every call, including a path prefix
// in the address.
func TestRoutes(t *testing.T) {
	t.Parallel()
	const id = "a/b c?d%e"
	const esc = "a%2Fb%20c%3Fd%25e"
	tests := []struct {
		name       string
		call       func(*Client) error
		wantMethod string
		wantPath   string
		answer     string
	}{
		{"version", func(c *Client) error { _, err := c.Version(context.Background()); return err },
			"GET", "/pre/api/version", `{}`},
		{"submit", func(c *Client) error {
			_, err := c.Submit(context.Background(), SubmitRequest{Entrypoint: "true"})
			return err
		}, "POST", "/pre/api/jobs/", `{"job_id":"raysubmit_1","submission_id":"raysubmit_1"}`},
		{"job", func(c *Client) error { _, err := c.Job(context.Background(), id); return err },
			"GET", "/pre/api/jobs/" + esc, `{}`},
		{"jobs", func(c *Client) error { _, err := c.Jobs(context.Background()); return err },
			"GET", "/pre/api/jobs/", `[]`},
		{"stop", func(c *Client) error { _, err := c.Stop(context.Background(), id); return err },
			"POST", "/pre/api/jobs/" + esc + "/stop", `{"stopped":true}`},
		{"delete", func(c *Client) error { return c.Delete(context.Background(), id) },
			"DELETE", "/pre/api/jobs/" + esc, `{"deleted":true}`},
		{"logs", func(c *Client) error { _, err := c.Logs(context.Background(), id); return err },
			"GET", "/pre/api/jobs/" + esc + "/logs", `{"logs":""}`},
		{"package exists", func(c *Client) error { _, err := c.PackageExists(context.Background(), "p/q.zip"); return err },
			"GET", "/pre/api/packages/gcs/p%2Fq.zip", ``},
		{"upload", func(c *Client) error { return c.UploadPackage(context.Background(), "p q.zip", []byte("PK")) },
			"PUT", "/pre/api/packages/gcs/p%20q.zip", ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var method, path string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				method, path = r.Method, r.URL.EscapedPath()
				io.WriteString(w, tt.answer)
			}))
			defer srv.Close()
			c, err := New(Config{Address: srv.URL + "/pre/"})
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.call(c); err != nil {
				t.Fatalf("got error %v, want nil", err)
			}
			if method != tt.wantMethod || path != tt.wantPath {
				t.Errorf("got %s %s, want %s %s", method, path, tt.wantMethod, tt.wantPath)
			}
		})
	}
}

func TestInvalidArgumentsMakeNoRequest(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	c := stub(t, Config{}, func(w http.ResponseWriter, r *http.Request) { n.Add(1) })
	ctx := context.Background()
	calls := map[string]func() error{
		"job empty":     func() error { _, err := c.Job(ctx, ""); return err },
		"job dot-dot":   func() error { _, err := c.Job(ctx, ".."); return err },
		"stop empty":    func() error { _, err := c.Stop(ctx, ""); return err },
		"delete empty":  func() error { return c.Delete(ctx, "") },
		"logs empty":    func() error { _, err := c.Logs(ctx, ""); return err },
		"exists empty":  func() error { _, err := c.PackageExists(ctx, ""); return err },
		"upload empty":  func() error { return c.UploadPackage(ctx, "", []byte("PK")) },
		"upload no zip": func() error { return c.UploadPackage(ctx, "p.zip", nil) },
		"submit no entrypoint": func() error {
			_, err := c.Submit(ctx, SubmitRequest{SubmissionID: "x"})
			return err
		},
		"submit negative cpus": func() error {
			_, err := c.Submit(ctx, SubmitRequest{Entrypoint: "true", EntrypointNumCPUs: -1})
			return err
		},
		"submit unencodable runtime_env": func() error {
			_, err := c.Submit(ctx, SubmitRequest{Entrypoint: "true", RuntimeEnv: map[string]any{"x": func() {}}})
			return err
		},
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, domain.ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	if got := n.Load(); got != 0 {
		t.Errorf("got %d requests, want 0", got)
	}
}

func TestSubmitBody(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		req  SubmitRequest
		want string // canonical JSON of the body
	}{
		{"minimal", SubmitRequest{Entrypoint: "echo hi"}, `{"entrypoint":"echo hi"}`},
		{"full", SubmitRequest{
			Entrypoint:          "echo hi",
			SubmissionID:        "s-1",
			RuntimeEnv:          map[string]any{"env_vars": map[string]any{"K": "V"}},
			Metadata:            map[string]string{"a": "b"},
			EntrypointNumCPUs:   0.5,
			EntrypointNumGPUs:   1,
			EntrypointMemory:    1 << 30,
			EntrypointResources: map[string]float64{"custom": 2},
		}, `{"entrypoint":"echo hi","entrypoint_memory":1073741824,"entrypoint_num_cpus":0.5,` +
			`"entrypoint_num_gpus":1,"entrypoint_resources":{"custom":2},"metadata":{"a":"b"},` +
			`"runtime_env":{"env_vars":{"K":"V"}},"submission_id":"s-1"}`},
		{"empty maps omitted", SubmitRequest{Entrypoint: "x", Metadata: map[string]string{}, RuntimeEnv: map[string]any{}},
			`{"entrypoint":"x"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var body map[string]any
			var ctype string
			c := stub(t, Config{}, func(w http.ResponseWriter, r *http.Request) {
				ctype = r.Header.Get("Content-Type")
				json.NewDecoder(r.Body).Decode(&body)
				io.WriteString(w, `{"job_id":"j","submission_id":"from-ray"}`)
			})
			id, err := c.Submit(context.Background(), tt.req)
			if err != nil {
				t.Fatalf("got %v, want nil", err)
			}
			if id != "from-ray" {
				t.Errorf("got id %q, want %q", id, "from-ray")
			}
			got, _ := json.Marshal(body) // map keys come out sorted
			if string(got) != tt.want {
				t.Errorf("got body %s, want %s", got, tt.want)
			}
			if ctype != "application/json" {
				t.Errorf("got Content-Type %q, want application/json", ctype)
			}
		})
	}
}

func TestJobDetailsDecoding(t *testing.T) {
	t.Parallel()
	const finished = `{"type": "SUBMISSION", "job_id": "02000000", "submission_id": "s-1", "driver_info": null,
		"status": "SUCCEEDED", "entrypoint": "python -c \"print(1)\"", "message": "Job finished successfully.",
		"error_type": null, "start_time": 1795763729695, "end_time": 1795763731414, "metadata": {"a": "b"},
		"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}, "driver_agent_http_address": "http://x:52365",
		"driver_node_id": "eb92", "driver_exit_code": 0}`
	const pending = `{"type": "SUBMISSION", "job_id": null, "submission_id": "s-2", "status": "PENDING",
		"entrypoint": "x", "message": null, "error_type": null, "start_time": 0, "end_time": null,
		"metadata": null, "runtime_env": null, "driver_exit_code": null}`
	zero := 0
	tests := []struct {
		name string
		body string
		want JobDetails
	}{
		{"finished", finished, JobDetails{
			Type: "SUBMISSION", JobID: "02000000", SubmissionID: "s-1", Status: StatusSucceeded,
			Entrypoint: `python -c "print(1)"`, Message: "Job finished successfully.",
			StartTime: time.UnixMilli(1795763729695).UTC(), EndTime: time.UnixMilli(1795763731414).UTC(),
			Metadata:   map[string]string{"a": "b"},
			RuntimeEnv: json.RawMessage(`{"working_dir": "gcs://_ray_pkg_x.zip"}`), DriverExitCode: &zero,
		}},
		{"pending with nulls", pending, JobDetails{Type: "SUBMISSION", SubmissionID: "s-2", Status: StatusPending, Entrypoint: "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := stub(t, Config{}, reply(200, tt.body))
			got, err := c.Job(context.Background(), "s")
			if err != nil {
				t.Fatalf("got %v, want nil", err)
			}
			gj, _ := json.Marshal(got)
			wj, _ := json.Marshal(tt.want)
			if string(gj) != string(wj) {
				t.Errorf("got %s, want %s", gj, wj)
			}
			if (got.DriverExitCode == nil) != (tt.want.DriverExitCode == nil) {
				t.Errorf("got DriverExitCode %v, want %v", got.DriverExitCode, tt.want.DriverExitCode)
			}
		})
	}
	t.Run("list", func(t *testing.T) {
		t.Parallel()
		c := stub(t, Config{}, reply(200, "["+finished+","+pending+`,{"type":"DRIVER","job_id":"03000000","status":"RUNNING"}]`))
		got, err := c.Jobs(context.Background())
		if err != nil {
			t.Fatalf("got %v, want nil", err)
		}
		if len(got) != 3 || got[0].SubmissionID != "s-1" || got[2].Type != "DRIVER" || got[2].SubmissionID != "" {
			t.Errorf("got %+v, want s-1, s-2 and a DRIVER job without submission id", got)
		}
	})
}

func TestJobStatusTerminal(t *testing.T) {
	t.Parallel()
	for s, want := range map[JobStatus]bool{
		StatusPending: false, StatusRunning: false, StatusStopped: true,
		StatusSucceeded: true, StatusFailed: true, "SOMETHING_NEW": false,
	} {
		if got := s.Terminal(); got != want {
			t.Errorf("%s.Terminal(): got %v, want %v", s, got, want)
		}
	}
}

func TestPackageExistsStatuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
		want   bool
		err    error
	}{
		{200, true, nil},
		{404, false, nil},
		{401, false, domain.ErrUnauthenticated},
		{503, false, domain.ErrUnavailable},
	}
	for _, tt := range tests {
		c := stub(t, Config{}, reply(tt.status, "Package gcs://p.zip does not exist"))
		got, err := c.PackageExists(context.Background(), "p.zip")
		if got != tt.want || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
			t.Errorf("status %d: got (%v, %v), want (%v, %v)", tt.status, got, err, tt.want, tt.err)
		}
	}
}

func TestLogsBodyLimit(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", maxBody+10) // over the general limit, under the logs limit
	c := stub(t, Config{}, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/logs") {
			json.NewEncoder(w).Encode(map[string]string{"logs": big})
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"version": big})
	})
	logs, err := c.Logs(context.Background(), "j")
	if err != nil || len(logs) != len(big) {
		t.Errorf("Logs: got (%d bytes, %v), want (%d bytes, nil)", len(logs), err, len(big))
	}
	if _, err := c.Version(context.Background()); !errors.Is(err, domain.ErrUnavailable) {
		t.Errorf("Version with oversized body: got %v, want ErrUnavailable", err)
	}
}

func TestPackageMissing(t *testing.T) {
	t.Parallel()
	const msg = "runtime_env setup failed: ... OSError: Failed to download runtime_env file package gcs://x.zip from the GCS"
	tests := []struct {
		name string
		j    JobDetails
		want bool
	}{
		{"missing package", JobDetails{Status: StatusFailed, ErrorType: "RUNTIME_ENV_SETUP_FAILURE", Message: msg}, true},
		{"other setup failure", JobDetails{Status: StatusFailed, ErrorType: "RUNTIME_ENV_SETUP_FAILURE", Message: "pip failed"}, false},
		{"driver failure", JobDetails{Status: StatusFailed, ErrorType: "JOB_ENTRYPOINT_COMMAND_ERROR", Message: msg}, false},
		{"succeeded", JobDetails{Status: StatusSucceeded}, false},
	}
	for _, tt := range tests {
		if got := tt.j.PackageMissing(); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

// A dashboard refusing our credential says what to set, so nobody waits out a timeout to
// learn it: 401 (no token sent) and 403 (the token is not the cluster's) read differently.
func TestTokenRefusalsSayWhatToSet(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status int
		token  string
		want   string
	}{
		{401, "", MsgTokenRequired},
		{403, "not-the-clusters-token", MsgTokenRefused},
	}
	for _, tt := range tests {
		c := stub(t, Config{Token: tt.token}, reply(tt.status, "Forbidden: Invalid authentication token"))
		_, err := c.Version(context.Background())
		if !errors.Is(err, domain.ErrUnauthenticated) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("HTTP %d: got %v, want ErrUnauthenticated saying %q", tt.status, err, tt.want)
		}
		if tt.token != "" && strings.Contains(err.Error(), tt.token) {
			t.Errorf("HTTP %d: got the token in %q, want it kept out", tt.status, err)
		}
	}
}
