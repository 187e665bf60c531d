// Running a bench driver (a Python module of this folder) as a Ray job, the way the gateway
// runs work on Ray: the Jobs REST API with the cluster's token, the code shipped as a GCS
// working_dir package. Shared by the execution-model report here (make bench-models) and
// the standing executor's report in e2e/ (make bench), which runs the baseline
// (baseline.py) through bench/baseline_report.py.
package bench

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/fleet-ai/ray-executor/shared/ray"
)

// Dir is this folder in the source tree (the bench runs from a checkout: go test).
func Dir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "."
	}
	return filepath.Dir(file)
}

// WorkingDir zips bench/*.py and ray_executor_payload/*.py (the drivers import the
// payload's LLM request and parsing code) into a Ray working_dir package named by its
// content, as shared/ray does for the payload.
func WorkingDir() (name string, data []byte, err error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	dir := Dir()
	for _, d := range []struct{ src, prefix string }{{dir, "bench"}, {filepath.Join(dir, "..", "ray_executor_payload"), "ray_executor_payload"}} {
		files, err := filepath.Glob(filepath.Join(d.src, "*.py"))
		if err != nil {
			return "", nil, err
		}
		if len(files) == 0 {
			return "", nil, fmt.Errorf("no Python files in %s", d.src)
		}
		slices.Sort(files)
		for _, f := range files {
			content, err := os.ReadFile(f)
			if err != nil {
				return "", nil, err
			}
			h := &zip.FileHeader{Name: d.prefix + "/" + filepath.Base(f), Method: zip.Store,
				Modified: time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)}
			h.SetMode(0o644)
			w, err := zw.CreateHeader(h)
			if err != nil {
				return "", nil, err
			}
			if _, err := w.Write(content); err != nil {
				return "", nil, err
			}
		}
	}
	if err := zw.Close(); err != nil {
		return "", nil, err
	}
	sum := sha256.Sum256(buf.Bytes())
	return "_ray_pkg_" + hex.EncodeToString(sum[:8]) + ".zip", buf.Bytes(), nil
}

// Job is one driver run: entrypoint (e.g. "python -u -m bench.baseline_report --llm-url
// ..."), a submission id prefix and the job's metadata.
type Job struct {
	Entrypoint string
	IDPrefix   string
	Metadata   map[string]string
	// Logf reports progress (the job's status changes); nil: silent.
	Logf func(format string, args ...any)
}

// Run uploads the working_dir package (once per content), submits the job, waits for it to
// end and returns its logs. A job that did not succeed is an error (with its last log
// lines); a job still running when ctx ends is stopped.
func Run(ctx context.Context, c *ray.Client, j Job) (logs string, err error) {
	logf := j.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	name, pkg, err := WorkingDir()
	if err != nil {
		return "", err
	}
	if ok, err := c.PackageExists(ctx, name); err != nil {
		return "", err
	} else if !ok {
		if err := c.UploadPackage(ctx, name, pkg); err != nil {
			return "", err
		}
	}
	id, err := c.Submit(ctx, ray.SubmitRequest{
		Entrypoint:   j.Entrypoint,
		SubmissionID: fmt.Sprintf("%s-%d", j.IDPrefix, time.Now().UnixNano()),
		RuntimeEnv:   map[string]any{"working_dir": "gcs://" + name},
		Metadata:     j.Metadata,
	})
	if err != nil {
		return "", err
	}
	logf("submitted %s: %s", id, j.Entrypoint)
	job, err := WaitJob(ctx, c, id, logf)
	if err != nil {
		stopCtx, stopCancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer stopCancel()
		_, _ = c.Stop(stopCtx, id) // the drivers clean up what they started on SIGTERM
		return "", fmt.Errorf("job %s: %w", id, err)
	}
	logs, err = c.Logs(ctx, id)
	if err != nil {
		return "", err
	}
	if job.Status != ray.StatusSucceeded {
		return logs, fmt.Errorf("job %s %s (%s): last log lines:\n%s", id, job.Status, job.Message, Tail(logs, 40))
	}
	return logs, nil
}

// WaitJob polls the job until it ends, reporting its status changes.
func WaitJob(ctx context.Context, c *ray.Client, id string, logf func(string, ...any)) (ray.JobDetails, error) {
	last := ray.JobStatus("")
	for {
		job, err := c.Job(ctx, id)
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			logf("job %s: %v (retrying)", id, err)
		}
		if err == nil {
			if job.Status != last {
				logf("job %s: %s", id, job.Status)
				last = job.Status
			}
			if job.Status.Terminal() {
				return job, nil
			}
		}
		select {
		case <-ctx.Done():
			return ray.JobDetails{}, fmt.Errorf("not finished: %w", ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
}

// ResultLine is the rest of the last log line starting with marker (and a space): the
// drivers print their result as one JSON line so.
func ResultLine(logs, marker string) (string, bool) {
	for _, line := range slices.Backward(strings.Split(logs, "\n")) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), marker+" "); ok {
			return rest, true
		}
	}
	return "", false
}

// Tail is the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
