//go:build bench

package framework_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// server is one process serving the status function.
type server struct {
	name string
	url  string
	cmd  *exec.Cmd
}

func startServer(t *testing.T, name, bin string, env ...string) *server {
	t.Helper()
	port := testenv.FreePort(t)
	cmd := exec.Command(bin)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), fmt.Sprintf("PORT=%d", port), "HOST=127.0.0.1",
		"LOG_LEVEL=warn", "GOMAXPROCS=1"}, env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	s := &server{name: name, url: fmt.Sprintf("http://127.0.0.1:%d", port), cmd: cmd}
	for i := 0; ; i++ {
		if r, err := http.Get(s.url + "/readyz"); err == nil && r.StatusCode == 200 {
			r.Body.Close()
			return s
		}
		if i > 1000 {
			t.Fatalf("%s never ready", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// load sends n GetDeliberationStatus events to url over conc keep-alive connections, as
// the ingress sends them (binary mode, protobuf data), and returns the elapsed time.
func load(t *testing.T, url string, n, conc int) time.Duration {
	t.Helper()
	client := &rpcevents.Client{HTTP: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}},
		Source: "cpu-bench", Protobuf: true}
	defer client.HTTP.CloseIdleConnections()
	req := &pb.GetDeliberationStatusRequest{DeliberationId: "never-minted"}
	var wg sync.WaitGroup
	var failed sync.Once
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += conc {
				var resp pb.GetDeliberationStatusResponse
				if err := client.Call(context.Background(), url, rpcevents.TypeGetDeliberationStatus, req,
					rpcevents.CallOptions{}, &resp); err != nil || resp.GetStatus() != "not_found" {
					failed.Do(func() { t.Errorf("%s: got %v %v, want not_found", url, &resp, err) })
					return
				}
			}
		}(w)
	}
	wg.Wait()
	return time.Since(start)
}

// TestFrameworkCPUReport measures the CPU one request costs the status function served two
// ways, in one run: its Knative binary (shared/serving: probes, h2c-capable http.Server,
// drain) and the Functions Framework runner (funcframework, FUNCTION_TARGET=status). Both
// run the same composed handler with GOMAXPROCS=1; the request (a GetDeliberationStatus of
// an id this system never minted, answered without Ray) keeps the handler's own work small
// so the serving path's share shows. Rounds alternate between the two; the figure is each
// one's median CPU per request (user + system of the server process, /proc/<pid>/stat).
func TestFrameworkCPUReport(t *testing.T) {
	n := envInt("BENCH_REQUESTS", 20000)
	rounds := envInt("BENCH_ROUNDS", 5)
	conc := envInt("BENCH_CONCURRENCY", 8)
	natsURL := "NATS_URL=" + testenv.NATS(t).Config().URL
	// Built here: the package's TestMain, which builds the framework binary for the other
	// tests, is in the ray-tagged file, and make bench builds this file with bench alone.
	dir := t.TempDir()
	knativeBin, frameworkBin := filepath.Join(dir, "status"), filepath.Join(dir, "funcframework")
	for bin, pkg := range map[string]string{knativeBin: "../status/cmd", frameworkBin: "./cmd"} {
		if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			t.Fatalf("building %s: %v\n%s", pkg, err, out)
		}
	}
	servers := []*server{
		startServer(t, "shared/serving (Knative image)", knativeBin, natsURL),
		startServer(t, "functions-framework-go (funcframework)", frameworkBin, natsURL, "FUNCTION_TARGET=status"),
	}
	for _, s := range servers { // warm up: connections, caches, the heap
		load(t, s.url, 2000, conc)
	}
	perReq := map[string][]float64{}
	rps := map[string][]float64{}
	for r := 0; r < rounds; r++ {
		for _, s := range servers {
			before := testenv.ProcCPU(t, s.cmd.Process.Pid)
			elapsed := load(t, s.url, n, conc)
			cpu := testenv.ProcCPU(t, s.cmd.Process.Pid) - before
			perReq[s.name] = append(perReq[s.name], float64(cpu.Microseconds())/float64(n))
			rps[s.name] = append(rps[s.name], float64(n)/elapsed.Seconds())
		}
	}
	fmt.Printf("\n%d rounds x %d requests, %d concurrent, GOMAXPROCS=1 servers\n\n", rounds, n, conc)
	fmt.Printf("| served by | CPU per request (median) | min–max | RPS (median) |\n|---|---|---|---|\n")
	for _, s := range servers {
		fmt.Printf("| %s | %.1f µs | %.1f–%.1f µs | %.0f |\n", s.name, median(perReq[s.name]),
			minOf(perReq[s.name]), maxOf(perReq[s.name]), median(rps[s.name]))
	}
	fmt.Printf("\nfunctions-framework-go / shared/serving CPU per request: %.2f\n",
		median(perReq[servers[1].name])/median(perReq[servers[0].name]))
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func minOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = min(m, x)
	}
	return m
}

func maxOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
