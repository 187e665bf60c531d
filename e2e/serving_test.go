//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/natslocal"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// slowRay is a Ray dashboard that answers every request (the version probe included) after
// delay: a Ray that is slow exactly when a request is in flight. Functions pointed at it
// must use a NATS server of their own (scratchNATS): it is no Ray an executor can run on,
// and their deployer must not name one in the shared store.
func slowRay(t testing.TB, delay time.Duration) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay)
		if r.URL.Path == "/api/version" {
			_, _ = w.Write([]byte(`{"version":"4","ray_version":"2.60.0"}`))
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// scratchNATS starts a NATS server (with JetStream) for one test and returns its URL.
func scratchNATS(t testing.TB) string {
	t.Helper()
	srv, err := natslocal.Start("127.0.0.1:0", filepath.Join(t.TempDir(), "nats"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	return srv.URL()
}

// Knative sends SIGTERM and then waits: a request already in flight must finish.
func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	t.Parallel()
	t.Run("function", func(t *testing.T) {
		t.Parallel()
		// GetStatus asks Ray whether it answers: 1.5 s here.
		p := start(t, "list", "RAY_ADDRESS="+slowRay(t, 1500*time.Millisecond), "NATS_URL="+scratchNATS(t))
		done := make(chan error, 1)
		var resp pb.GetStatusResponse
		go func() {
			c := &rpcevents.Client{Source: "drain-test"}
			done <- c.Call(context.Background(), p.url, rpcevents.TypeGetStatus, &pb.GetStatusRequest{}, rpcevents.CallOptions{}, &resp)
		}()
		time.Sleep(300 * time.Millisecond)
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil || len(resp.GetComponents()) == 0 || resp.GetComponents()[0].GetName() != "ray" {
			t.Fatalf("in-flight request got %v %v, want it answered (with the ray component) despite SIGTERM", &resp, err)
		}
		if err := p.cmd.Wait(); err != nil {
			t.Errorf("list exited with %v after draining, want 0", err)
		}
		if _, err := http.Get(p.url + "/healthz"); err == nil {
			t.Errorf("a drained function still accepts connections")
		}
	})
	t.Run("ingress", func(t *testing.T) {
		t.Parallel()
		slowFn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(1500 * time.Millisecond)
			w.Header().Set("Ce-Specversion", "1.0")
			w.Header().Set("Ce-Id", "r1")
			w.Header().Set("Ce-Source", "slow")
			w.Header().Set("Ce-Type", "fleet.ray_executor.v1.GetActiveJobsResponse")
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"jobs":[{"job_id":"delib-x"}]}`))
		}))
		t.Cleanup(slowFn.Close)
		port := testenv.FreePort(t)
		cmd := exec.Command(filepath.Join(binDir, "ingress"))
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), fmt.Sprintf("PORT=%d", port), "HOST=127.0.0.1",
			"LIST_URL=" + slowFn.URL, "NATS_URL=" + scratchNATS(t)}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if c, err := dialTCP(addr); err == nil {
				c.Close()
				break
			} else if time.Now().After(deadline) {
				t.Fatalf("ingress never listened: %v", err)
			}
		}
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		client := pb.NewRayExecutorServiceClient(conn)
		type result struct {
			resp *pb.GetActiveJobsResponse
			err  error
		}
		done := make(chan result, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			r, err := client.GetActiveJobs(ctx, &pb.GetActiveJobsRequest{}, grpc.WaitForReady(true))
			done <- result{r, err}
		}()
		time.Sleep(700 * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		r := <-done
		if r.err != nil || len(r.resp.GetJobs()) != 1 {
			t.Fatalf("in-flight RPC got %v %v, want it answered despite SIGTERM", r.resp, r.err)
		}
		if err := cmd.Wait(); err != nil {
			t.Errorf("ingress exited with %v after draining, want 0", err)
		}
	})
}

// Every binary starts with nothing but PORT and NATS_URL (and the documented defaults) and
// its readiness probe answers; how fast is measured by `make bench` (BENCHMARKS.md), not
// asserted here.
func TestBinariesStartWithOnlyPORTAndNATS(t *testing.T) {
	t.Parallel()
	ray, nats := slowRay(t, 0), scratchNATS(t)
	for _, name := range []string{"execute", "status", "list", "ingress"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			d, err := timeToReady(name, ray, nats)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s ready %v after exec", name, d)
		})
	}
}

// timeToReady starts binary name with only PORT and NATS_URL (NATS is the store; readiness
// is NATS answering), plus RAY_ADDRESS at rayURL (a stand-in, so no executor is deployed),
// and returns how long after exec its readiness probe first succeeded: /readyz 200 for
// functions, a TCP accept for the ingress (its Knative probe is tcpSocket). A port another
// test took between the probe for a free one and the binary's bind is tried again with
// another port, at most twice; any other early exit is an error with the binary's output.
func timeToReady(name, rayURL, natsURL string) (time.Duration, error) {
	for try := 1; ; try++ {
		d, err := timeToReadyOnce(name, rayURL, natsURL)
		if errors.Is(err, errPortTaken) && try < 3 {
			continue
		}
		return d, err
	}
}

var errPortTaken = errors.New("port taken")

func timeToReadyOnce(name, rayURL, natsURL string) (time.Duration, error) {
	ln, err := (&net0{}).port()
	if err != nil {
		return 0, err
	}
	cmd := exec.Command(filepath.Join(binDir, name))
	cmd.Env = []string{fmt.Sprintf("PORT=%d", ln), "RAY_ADDRESS=" + rayURL, "NATS_URL=" + natsURL}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", ln)
	client := &http.Client{Timeout: time.Second}
	for time.Since(t0) < 10*time.Second {
		select {
		case err := <-exited:
			exited <- err // for the deferred wait
			if strings.Contains(out.String(), "address already in use") {
				return 0, fmt.Errorf("%s: %w: %s", name, errPortTaken, out.String())
			}
			return 0, fmt.Errorf("%s exited before it was ready (%v); its output:\n%s", name, err, out.String())
		default:
		}
		if name == "ingress" {
			if c, err := dialTCP(fmt.Sprintf("127.0.0.1:%d", ln)); err == nil {
				c.Close()
				return time.Since(t0), nil
			}
		} else if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(t0), nil
			}
		}
		time.Sleep(time.Millisecond)
	}
	return 0, fmt.Errorf("%s not ready within 10s; its output:\n%s", name, out.String())
}
