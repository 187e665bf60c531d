//go:build e2e && bench

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// TestColdStartReport measures how soon each binary's readiness probe succeeds after exec
// (median of 9 starts), for BENCHMARKS.md. Knative's probes need it well under 100 ms.
func TestColdStartReport(t *testing.T) {
	ray, nats := slowRay(t, 0), scratchNATS(t)
	fmt.Printf("\n| binary | readiness after exec, median of 9 | max |\n|---|---|---|\n")
	for _, name := range []string{"execute", "status", "list", "ingress"} {
		var ds []time.Duration
		for i := 0; i < 9; i++ {
			d, err := timeToReady(name, ray, nats)
			if err != nil {
				t.Fatal(err)
			}
			ds = append(ds, d)
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		fmt.Printf("| %s | %.1f ms | %.1f ms |\n", name, ms(ds[4]), ms(ds[8]))
		if ds[4] >= 100*time.Millisecond {
			t.Errorf("%s: median readiness %v, want < 100 ms", name, ds[4])
		}
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// TestFunctionCapacityReport sweeps concurrency against one status function process limited
// to one CPU (GOMAXPROCS=1, a 1-CPU Knative replica) reading one running deliberation's
// record from a local NATS server (one KV read per request); the knee sets
// containerConcurrency and the autoscaling target.
func TestFunctionCapacityReport(t *testing.T) {
	nats, id := scratchRecord(t)
	port := testenv.FreePort(t)
	cmd := exec.Command(filepath.Join(binDir, "status"))
	cmd.Env = []string{fmt.Sprintf("PORT=%d", port), "NATS_URL=" + nats,
		"GOMAXPROCS=1", "LOG_LEVEL=warn", "PATH=" + os.Getenv("PATH")}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	url := fmt.Sprintf("http://127.0.0.1:%d", port)
	for i := 0; ; i++ {
		if r, err := http.Get(url + "/readyz"); err == nil && r.StatusCode == 200 {
			r.Body.Close()
			break
		}
		if i > 1000 {
			t.Fatal("status never ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 512
	c := &rpcevents.Client{HTTP: &http.Client{Transport: tr}, Source: "capacity", Protobuf: true}
	fmt.Printf("\n| concurrent requests | RPS | p50 | p99 |\n|---|---|---|---|\n")
	for _, n := range []int{1, 8, 16, 32, 64, 128, 256} {
		var mu sync.Mutex
		var lat []time.Duration
		stop := time.Now().Add(3 * time.Second)
		var wg sync.WaitGroup
		start := time.Now()
		for w := 0; w < n; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					t0 := time.Now()
					var resp pb.GetDeliberationStatusResponse
					if err := c.Call(context.Background(), url, rpcevents.TypeGetDeliberationStatus,
						&pb.GetDeliberationStatusRequest{DeliberationId: id}, rpcevents.CallOptions{}, &resp); err != nil {
						t.Error(err)
						return
					}
					d := time.Since(t0)
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		el := time.Since(start)
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		fmt.Printf("| %d | %.0f | %.1f ms | %.1f ms |\n", n, float64(len(lat))/el.Seconds(), ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100]))
	}
}
