//go:build ray

package ray

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// These tests run against the real Ray head from testenv (a missing head fails them).
// Jobs take a few seconds to start, so the independent subtests run in parallel.

const jobDeadline = 60 * time.Second

func randomSuffix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return time.Now().UTC().Format("150405") + "-" + hex.EncodeToString(b)
}

func realClient(t *testing.T) *Client {
	t.Helper()
	c, err := New(Config{Address: testenv.RayAddress(t), Token: testenv.RayToken(t), Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("New: got %v, want nil", err)
	}
	return c
}

// submit submits req and registers a cleanup that stops and deletes the job.
func submit(t *testing.T, c *Client, req SubmitRequest) string {
	t.Helper()
	// A freshly started head answers "No available agent" (ErrUnavailable) for a few
	// seconds; retry that like the gateway would.
	var id string
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; {
		id, err = c.Submit(context.Background(), req)
		if !errors.Is(err, domain.ErrUnavailable) || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Submit %s: got %v, want nil", req.SubmissionID, err)
	}
	if req.SubmissionID != "" && id != req.SubmissionID {
		t.Errorf("Submit: got id %q, want %q", id, req.SubmissionID)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), jobDeadline)
		defer cancel()
		c.Stop(ctx, id)
		for ctx.Err() == nil {
			j, err := c.Job(ctx, id)
			if errors.Is(err, domain.ErrNotFound) {
				return
			}
			if err == nil && j.Status.Terminal() {
				if err := c.Delete(ctx, id); err != nil && !errors.Is(err, domain.ErrNotFound) {
					t.Logf("cleanup: delete %s: %v", id, err)
				}
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	return id
}

// waitTerminal polls the job until it is terminal and returns its details.
func waitTerminal(t *testing.T, c *Client, id string) JobDetails {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), jobDeadline)
	defer cancel()
	var last JobDetails
	for {
		j, err := c.Job(ctx, id)
		switch {
		case err == nil:
			last = j
			if j.Status.Terminal() {
				return j
			}
		case ctx.Err() == nil:
			t.Fatalf("Job %s: got %v, want nil", id, err)
		}
		if ctx.Err() != nil {
			logs, _ := c.Logs(context.Background(), id)
			t.Fatalf("job %s: got status %s after %s, want a terminal status; message %q; logs:\n%s",
				id, last.Status, jobDeadline, last.Message, logs)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func TestRealRay(t *testing.T) {
	c := realClient(t)
	suffix := randomSuffix(t)
	ctx := context.Background()

	t.Run("version", func(t *testing.T) {
		t.Parallel()
		v, err := c.Version(ctx)
		if err != nil {
			t.Fatalf("got %v, want nil", err)
		}
		if v.RayVersion == "" || v.Version == "" {
			t.Errorf("got %+v, want ray_version and version set", v)
		}
	})

	t.Run("unknown job", func(t *testing.T) {
		t.Parallel()
		id := "no-such-job-" + suffix
		_, err := c.Job(ctx, id)
		if !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("Job: got %v, want ErrNotFound", err)
		}
		t.Logf("Job: %v", err)
		if _, err := c.Logs(ctx, id); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("Logs: got %v, want ErrNotFound", err)
		}
		if _, err := c.Stop(ctx, id); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("Stop: got %v, want ErrNotFound", err)
		}
		if err := c.Delete(ctx, id); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("Delete: got %v, want ErrNotFound", err)
		}
	})

	t.Run("missing working_dir package", func(t *testing.T) {
		t.Parallel()
		// Ray accepts the submission and fails the job during runtime_env setup.
		id := "nopkg-" + suffix
		submit(t, c, SubmitRequest{
			Entrypoint:   "true",
			SubmissionID: id,
			RuntimeEnv:   map[string]any{"working_dir": "gcs://_ray_pkg_missing" + strings.ReplaceAll(suffix, "-", "") + ".zip"},
		})
		j := waitTerminal(t, c, id)
		if j.Status != StatusFailed || !j.PackageMissing() {
			t.Errorf("got status %s, error type %q, PackageMissing %v; want FAILED, true (message %q)",
				j.Status, j.ErrorType, j.PackageMissing(), j.Message)
		}
	})

	t.Run("hello job", func(t *testing.T) {
		t.Parallel()
		id := "hello-" + suffix
		meta := map[string]string{"deliberation": "d-" + suffix, "owner": "ray-executor-test"}
		submit(t, c, SubmitRequest{
			Entrypoint:        `python -c "print('hello-from-ray')"`,
			SubmissionID:      id,
			Metadata:          meta,
			EntrypointNumCPUs: 0.1,
		})

		// The real server reports a reused submission_id as HTTP 500 "... already exists".
		_, err := c.Submit(ctx, SubmitRequest{Entrypoint: "true", SubmissionID: id})
		if !errors.Is(err, domain.ErrAlreadyExists) {
			t.Errorf("duplicate Submit: got %v, want ErrAlreadyExists", err)
		}
		t.Logf("duplicate Submit: %v", err)

		j := waitTerminal(t, c, id)
		if j.Status != StatusSucceeded {
			logs, _ := c.Logs(ctx, id)
			t.Fatalf("got status %s (%s), want SUCCEEDED; logs:\n%s", j.Status, j.Message, logs)
		}
		if j.Type != "SUBMISSION" || j.SubmissionID != id || j.Entrypoint != `python -c "print('hello-from-ray')"` {
			t.Errorf("got type %q, submission id %q, entrypoint %q; want SUBMISSION, %q and the submitted entrypoint",
				j.Type, j.SubmissionID, j.Entrypoint, id)
		}
		for k, v := range meta {
			if j.Metadata[k] != v {
				t.Errorf("got metadata %v, want %s=%s in it", j.Metadata, k, v)
			}
		}
		if j.StartTime.IsZero() || j.EndTime.Before(j.StartTime) || time.Since(j.StartTime) > 10*time.Minute {
			t.Errorf("got start %s end %s, want a recent start and end after it", j.StartTime, j.EndTime)
		}
		if j.DriverExitCode == nil || *j.DriverExitCode != 0 {
			t.Errorf("got driver exit code %v, want 0", j.DriverExitCode)
		}

		logs, err := c.Logs(ctx, id)
		if err != nil || !strings.Contains(logs, "hello-from-ray") {
			t.Errorf("Logs: got (%q, %v), want logs containing hello-from-ray", logs, err)
		}

		all, err := c.Jobs(ctx)
		if err != nil {
			t.Fatalf("Jobs: got %v, want nil", err)
		}
		found := false
		for _, x := range all {
			found = found || x.SubmissionID == id
		}
		if !found {
			t.Errorf("Jobs: got %d jobs without %s, want it listed", len(all), id)
		}

		if err := c.Delete(ctx, id); err != nil {
			t.Fatalf("Delete: got %v, want nil", err)
		}
		if _, err := c.Job(ctx, id); !errors.Is(err, domain.ErrNotFound) {
			t.Errorf("Job after Delete: got %v, want ErrNotFound", err)
		}
	})

	t.Run("stop", func(t *testing.T) {
		t.Parallel()
		id := "sleep-" + suffix
		submit(t, c, SubmitRequest{
			Entrypoint:   `python -c "import time; time.sleep(60)"`,
			SubmissionID: id,
		})
		if err := c.Delete(ctx, id); !errors.Is(err, domain.ErrUnavailable) {
			t.Errorf("Delete of a live job: got %v, want ErrUnavailable (Ray answers 500)", err)
		} else {
			t.Logf("Delete of a live job: %v", err)
		}
		stopped, err := c.Stop(ctx, id)
		if err != nil || !stopped {
			t.Fatalf("Stop: got (%v, %v), want (true, nil)", stopped, err)
		}
		j := waitTerminal(t, c, id)
		if j.Status != StatusStopped {
			t.Fatalf("got status %s (%s), want STOPPED", j.Status, j.Message)
		}
		// Ray answers true while the job's supervisor actor is alive, and it can outlive the
		// STOPPED status by a moment (seen when the job was stopped while PENDING); once it
		// has exited, a Stop reports false.
		deadline := time.Now().Add(30 * time.Second)
		for {
			stopped, err := c.Stop(ctx, id)
			if err != nil {
				t.Fatalf("Stop of a stopped job: got %v, want nil", err)
			}
			if !stopped {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("Stop of a stopped job: still true 30 s after STOPPED, want false")
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err := c.Delete(ctx, id); err != nil {
			t.Errorf("Delete: got %v, want nil", err)
		}
	})

	t.Run("packages", func(t *testing.T) {
		t.Parallel()
		name := "_ray_pkg_test" + strings.ReplaceAll(suffix, "-", "") + ".zip"
		exists, err := c.PackageExists(ctx, name)
		if err != nil || exists {
			t.Fatalf("PackageExists of a new name: got (%v, %v), want (false, nil)", exists, err)
		}
		data := testZip(t, "pkg", "# "+suffix+"\n")
		if err := c.UploadPackage(ctx, name, data); err != nil {
			t.Fatalf("UploadPackage: got %v, want nil", err)
		}
		exists, err = c.PackageExists(ctx, name)
		if err != nil || !exists {
			t.Errorf("PackageExists after upload: got (%v, %v), want (true, nil)", exists, err)
		}
	})

	t.Run("working_dir package", func(t *testing.T) {
		t.Parallel()
		data := testZip(t, "rayclienttest", "print('payload-ok', "+strconv.Quote(suffix)+")\n")
		sum := sha256.Sum256(data)
		name := "_ray_pkg_" + hex.EncodeToString(sum[:8]) + ".zip"
		p := NewPackager(c, name, data, 0)
		wd, err := p.WorkingDir(ctx)
		if err != nil {
			t.Fatalf("WorkingDir: got %v, want nil", err)
		}
		if wd != "gcs://"+name {
			t.Errorf("WorkingDir: got %q, want %q", wd, "gcs://"+name)
		}
		if exists, err := c.PackageExists(ctx, name); err != nil || !exists {
			t.Fatalf("PackageExists after WorkingDir: got (%v, %v), want (true, nil)", exists, err)
		}
		id := "payload-" + suffix
		submit(t, c, SubmitRequest{
			Entrypoint:   `python -c "import rayclienttest"`,
			SubmissionID: id,
			RuntimeEnv:   map[string]any{"working_dir": wd},
		})
		j := waitTerminal(t, c, id)
		logs, _ := c.Logs(ctx, id)
		if j.Status != StatusSucceeded || !strings.Contains(logs, "payload-ok") {
			t.Fatalf("got status %s (%s), want SUCCEEDED with payload-ok in the logs; logs:\n%s", j.Status, j.Message, logs)
		}
		var env struct {
			WorkingDir string `json:"working_dir"`
		}
		if err := json.Unmarshal(j.RuntimeEnv, &env); err != nil || env.WorkingDir != wd {
			t.Errorf("got runtime_env %s (%v), want working_dir %q", j.RuntimeEnv, err, wd)
		}
	})
}

// testZip is a working_dir package holding one Python package, module, whose __init__.py
// is src.
func testZip(t *testing.T, module, src string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, err := zw.Create(module + "/__init__.py")
	if err == nil {
		_, err = w.Write([]byte(src))
	}
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
