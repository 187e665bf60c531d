//go:build e2e && bench

package e2e

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// TestTelemetryChainReport measures what tracing and metrics cost the chain (a gRPC
// GetDeliberationStatus through the ingress to the status function, which reads the record
// from NATS), both binaries as plain processes, four ways interleaved round by round: (a)
// telemetry off (no OTLP endpoint, no metrics port), as before issue 14; (b) every request
// traced (the ingress's RPC span and the function's request span) and exported
// over OTLP to the tests' receiver (bin/otlp-sink), batched as deployed (the SDK's defaults),
// with metrics exported every 500 ms and served on a metrics port that is scraped once a
// second. Beside throughput it reports the CPU time per request of the two processes and of
// the receiver. It runs the rounds twice: with everything on the machine's shared cores, and
// with the receiver on a CPU of its own (a cluster's collector runs on other nodes; on this
// 2-core machine the receiver's work otherwise comes out of the chain's throughput). Issue 14's target: (b) within 10%
// of (a)'s throughput. (c) and (d) say what sampling buys: 1 request in 10 traced, none.
// Knobs: BENCH_SECONDS (3), BENCH_ROUNDS (5), BENCH_CONCURRENCY (32).
func TestTelemetryChainReport(t *testing.T) {
	secs, rounds, conc := benchKnob("BENCH_SECONDS", 3), benchKnob("BENCH_ROUNDS", 5), benchKnob("BENCH_CONCURRENCY", 32)
	b := newBenchChain(t)
	sink := testenv.StartOTLPSink(t)
	procs := map[string][]string{} // an ingress's address: it and its status function
	stack := func(extra func() []string) string {
		st := benchProcess(t, "status", append(append([]string{}, b.env...), extra()...))
		in := benchProcess(t, "ingress", b.ingressEnv("http://"+st, extra()...))
		procs[in] = []string{in, st}
		return in
	}
	var metricsPorts []int
	traced := func(sampler ...string) func() []string {
		return func() []string {
			p := testenv.FreePort(t)
			metricsPorts = append(metricsPorts, p)
			// The span batcher as deployed (the SDK's defaults: knative/ sets no OTEL_BSP_*),
			// not the tests' short delay.
			var env []string
			for _, e := range sink.Env() {
				if !strings.HasPrefix(e, "OTEL_BSP_") {
					env = append(env, e)
				}
			}
			return append(append(env, fmt.Sprintf("METRICS_PORT=%d", p)), sampler...)
		}
	}
	off := stack(func() []string { return nil })
	on := stack(traced())
	tenth := stack(traced("OTEL_TRACES_SAMPLER=parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG=0.1"))
	metricsOnly := stack(traced("OTEL_TRACES_SAMPLER=always_off"))
	stop := make(chan struct{})
	defer close(stop)
	go func() { // a Prometheus server scraping both of (b)'s ports
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			for _, p := range metricsPorts {
				scrapeQuietly(p)
			}
		}
	}()
	setups := []struct{ name, addr string }{{"(a) telemetry off", off}, {"(b) every request traced and exported over OTLP, metrics exported and scraped", on},
		{"(c) as (b), 1 request in 10 traced (OTEL_TRACES_SAMPLER=parentbased_traceidratio, 0.1)", tenth},
		{"(d) as (b), no request traced (OTEL_TRACES_SAMPLER=always_off): metrics alone", metricsOnly}}
	// Two placements, one after the other: (1) everything shares the machine's cores, the
	// receiver included; (2) the receiver alone on the last CPU and everything else (both
	// binaries of each stack, the load generator and NATS, which run in this test's process)
	// on the others, as a collector runs on nodes of its own in a cluster.
	var all []int
	for id := range pidsOf(t, procs) {
		all = append(all, id)
	}
	var made float64
	phase := func(title string) {
		results := make([][]loadResult, len(setups))
		// CPU time per request, in microseconds: of the setup's two processes, and of the
		// receiver while that setup ran, summed over the rounds.
		cpuUS, sinkUS, requests := make([]float64, len(setups)), make([]float64, len(setups)), make([]float64, len(setups))
		for r := 0; r < rounds; r++ {
			for i, s := range setups {
				before, sinkBefore := cpuSeconds(t, procs[s.addr]), cpuSeconds(t, nil, sink.PID())
				res := chainLoad(t, s.addr, benchCaller, b.id, conc, time.Duration(secs)*time.Second)
				cpuUS[i] += 1e6 * (cpuSeconds(t, procs[s.addr]) - before)
				sinkUS[i] += 1e6 * (cpuSeconds(t, nil, sink.PID()) - sinkBefore)
				requests[i] += res.rps * float64(secs)
				results[i] = append(results[i], res)
			}
			fmt.Printf("%s, round %d: RPS (a) %.0f (b) %.0f (c) %.0f (d) %.0f\n", title, r+1, results[0][r].rps, results[1][r].rps, results[2][r].rps, results[3][r].rps)
		}
		made += 2*requests[1] + 0.2*requests[2]
		fmt.Printf("\n%s\n\n| setup (closed loop, %d concurrent, median of %d rounds of %d s) | RPS | p50 | p99 | CPU per request, ingress + status | receiver's CPU per request |\n|---|---|---|---|---|---|\n",
			title, conc, rounds, secs)
		for i, s := range setups {
			m := medianResult(results[i])
			fmt.Printf("| %s | %.0f | %.2f ms | %.2f ms | %.0f µs | %.0f µs |\n", s.name, m.rps, ms(m.p50), ms(m.p99), cpuUS[i]/requests[i], sinkUS[i]/requests[i])
		}
		ratio := func(i int) float64 {
			var rs []float64
			for r := 0; r < rounds; r++ {
				rs = append(rs, results[i][r].rps/results[0][r].rps)
			}
			sort.Float64s(rs)
			return 100 * rs[len(rs)/2]
		}
		fmt.Printf("\nthroughput against (a), median of the rounds' ratios: (b) %.1f%% (target >= 90%%), (c) %.1f%%, (d) %.1f%%\n",
			ratio(1), ratio(2), ratio(3))
		fmt.Printf("CPU per request of the two binaries against (a): (b) %.1f%%, (c) %.1f%%, (d) %.1f%%\n\n",
			100*cpuUS[1]/requests[1]/(cpuUS[0]/requests[0]), 100*cpuUS[2]/requests[2]/(cpuUS[0]/requests[0]), 100*cpuUS[3]/requests[3]/(cpuUS[0]/requests[0]))
	}
	phase("(1) all on the machine's shared cores")
	if n := runtime.NumCPU(); n < 2 {
		fmt.Printf("(2) not run: %d CPU, the receiver cannot have one of its own\n", n)
	} else {
		last := n - 1
		pinCPUs(t, seq(0, last), append(all, os.Getpid())...)
		pinCPUs(t, []int{last}, sink.PID())
		time.Sleep(2 * time.Second) // the Go runtimes notice their CPUs (GOMAXPROCS follows)
		phase(fmt.Sprintf("(2) the receiver alone on CPU %d, the rest on CPU 0-%d", last, last-1))
		pinCPUs(t, seq(0, n), append(all, os.Getpid(), sink.PID())...)
	}
	// The traced setup really exported: spans of both binaries reached the receiver.
	spans := sink.Spans()
	var ingress, status int
	for _, sp := range spans {
		switch {
		case strings.HasSuffix(sp.ServiceName, "ingress"):
			ingress++
		case strings.HasSuffix(sp.ServiceName, "status"):
			status++
		}
	}
	// Each traced request makes two spans; a batch span processor whose queue is full drops
	// spans, which would make tracing look cheaper than it is: say how many arrived.
	fmt.Printf("spans received: ingress %d, status %d; (b) and (c) made about %.0f\n", ingress, status, made)
	if ingress == 0 || status == 0 {
		t.Errorf("the traced setup exported no spans of the ingress (%d) or of status (%d)", ingress, status)
	}
}

// scrapeQuietly reads a metrics port once, as a Prometheus server would, ignoring errors.
func scrapeQuietly(port int) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// pidsOf is the process ids of the stacks' binaries.
func pidsOf(t *testing.T, procs map[string][]string) map[int]bool {
	t.Helper()
	out := map[int]bool{}
	for _, addrs := range procs {
		for _, a := range addrs {
			pid, ok := benchPIDs.Load(a)
			if !ok {
				t.Fatalf("no process known at %s", a)
			}
			out[pid.(int)] = true
		}
	}
	return out
}

// seq is from, from+1, ..., to-1.
func seq(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}

// pinCPUs lets every thread of each process run only on cpus (what taskset -a does); twice,
// for a thread started from one not yet pinned.
func pinCPUs(t *testing.T, cpus []int, pids ...int) {
	t.Helper()
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	for range 2 {
		for _, pid := range pids {
			tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			if err != nil {
				t.Fatal(err)
			}
			for _, task := range tasks {
				tid, _ := strconv.Atoi(task.Name())
				if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
					t.Fatalf("pinning thread %d of %d: %v", tid, pid, err)
				}
			}
		}
	}
}
