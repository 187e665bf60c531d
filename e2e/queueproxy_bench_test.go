//go:build e2e && bench

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// TestQueueProxyChainReport measures the chain (a gRPC GetDeliberationStatus through the
// ingress to the status function, which reads the record from NATS) three ways in one run,
// interleaved round by round: (a) direct, both binaries as plain processes; (b) the same in
// pods (network namespaces, reached through the pods' Unix-socket relays), no queue-proxy;
// (c) each behind Knative's queue-proxy in its pod, with knative/*.yaml's settings. (c)/(b)
// is queue-proxy's own cost; (c)/(a) what the tests' Knative path costs in all. Then the
// status function alone (GOMAXPROCS=1, a 1-CPU replica) swept in concurrency directly and
// through queue-proxy without a limit (CONTAINER_CONCURRENCY=0): the knee through
// queue-proxy sets containerConcurrency and the autoscaling target (BENCHMARKS.md).
// Knobs: BENCH_SECONDS (3), BENCH_ROUNDS (3), BENCH_CONCURRENCY (32).
func TestQueueProxyChainReport(t *testing.T) {
	secs, rounds, conc := benchKnob("BENCH_SECONDS", 3), benchKnob("BENCH_ROUNDS", 3), benchKnob("BENCH_CONCURRENCY", 32)
	b := newBenchChain(t)
	nats, id, ray, env, caller := b.nats, b.id, b.ray, b.env, benchCaller
	out := []int{portOf(t, nats), portOf(t, ray)}
	ingressEnv := func(statusURL string) []string { return b.ingressEnv(statusURL) }

	// (a) direct.
	stA := benchProcess(t, "status", env)
	ingA := benchProcess(t, "ingress", ingressEnv("http://"+stA))
	// (b) pods, no queue-proxy: the container's port is reached through the pod's relay.
	podded := func(name string, env []string, out []int) string {
		r := testenv.LoadRevision(t, name)
		pod := testenv.NewPod(t, name, []int{r.ContainerPort}, out)
		pod.Start(t, name, filepath.Join(binDir, name), append(r.ContainerEnv(), env...))
		waitAccept(t, pod.Addr(r.ContainerPort))
		return pod.Addr(r.ContainerPort)
	}
	stB := podded("status", env, out)
	ingB := podded("ingress", ingressEnv("http://"+stB), append(out, portOf(t, "http://"+stB)))
	// (c) behind queue-proxy.
	stC := testenv.ServeRevision(t, "status", filepath.Join(binDir, "status"), env, out)
	ingC := testenv.ServeRevision(t, "ingress", filepath.Join(binDir, "ingress"), ingressEnv(stC.URL), append(out, portOf(t, stC.URL)))

	setups := []struct{ name, addr string }{
		{"(a) direct: ingress -> status", ingA},
		{"(b) in pods, no queue-proxy", ingB},
		{"(c) each behind queue-proxy", strings.TrimPrefix(ingC.URL, "http://")},
	}
	results := make([][]loadResult, len(setups))
	for r := 0; r < rounds; r++ {
		for i, s := range setups {
			results[i] = append(results[i], chainLoad(t, s.addr, caller, id, conc, time.Duration(secs)*time.Second))
		}
	}
	fmt.Printf("\n| setup (closed loop, %d concurrent, median of %d rounds of %d s) | RPS | p50 | p99 |\n|---|---|---|---|\n", conc, rounds, secs)
	med := make([]loadResult, len(setups))
	for i, s := range setups {
		med[i] = medianResult(results[i])
		fmt.Printf("| %s | %.0f | %.2f ms | %.2f ms |\n", s.name, med[i].rps, ms(med[i].p50), ms(med[i].p99))
	}
	ratio := func(i, j int) float64 {
		var rs []float64
		for r := 0; r < rounds; r++ {
			rs = append(rs, results[i][r].rps/results[j][r].rps)
		}
		sort.Float64s(rs)
		return rs[len(rs)/2]
	}
	fmt.Printf("\nthroughput (c)/(a) %.1f%%, (c)/(b) %.1f%% (queue-proxy's own cost), (b)/(a) %.1f%% (the pods' relays); median of the rounds' ratios\n",
		100*ratio(2, 0), 100*ratio(2, 1), 100*ratio(1, 0))
	if med[2].rps <= 0 {
		t.Fatal("no request through queue-proxy succeeded")
	}

	// The knee: status alone, one CPU, directly and through queue-proxy without a limit.
	one := append(append([]string{}, env...), "GOMAXPROCS=1")
	direct := benchProcess(t, "status", one)
	r := testenv.LoadRevision(t, "status")
	r.ContainerConcurrency = 0
	viaQP := testenv.Serve(t, r, filepath.Join(binDir, "status"), one, out)
	c := functionClient()
	c.Protobuf = true
	c.HTTP.Transport = benchTransport()
	fmt.Printf("\n| concurrent requests | direct RPS | p50 | p99 | through queue-proxy RPS | p50 | p99 |\n|---|---|---|---|---|---|---|\n")
	for _, n := range []int{1, 8, 16, 32, 64, 128, 256} {
		d := functionLoad(t, c, "http://"+direct, id, n, 2*time.Second)
		q := functionLoad(t, c, viaQP.URL, id, n, 2*time.Second)
		fmt.Printf("| %d | %.0f | %.1f ms | %.1f ms | %.0f | %.1f ms | %.1f ms |\n", n, d.rps, ms(d.p50), ms(d.p99), q.rps, ms(q.p50), ms(q.p99))
	}
	fmt.Printf("\ncontainerConcurrency in knative/status.yaml: %d\n", testenv.LoadRevision(t, "status").ContainerConcurrency)
}

// benchChain is what the chain benchmarks share: a NATS server of their own holding one
// deliberation's record (id), a Ray stand-in answering at once, a tokens file naming the
// read caller benchCaller, and the functions' environment.
type benchChain struct {
	nats, id, ray, tokens string
	env                   []string
}

const benchCaller = "bench-caller-0a1b2c3d4e5f60718293a4b5c6d7e8f9"

func newBenchChain(t *testing.T) benchChain {
	t.Helper()
	b := benchChain{ray: slowRay(t, 0), tokens: filepath.Join(t.TempDir(), "tokens")}
	b.nats, b.id = scratchRecord(t)
	if err := os.WriteFile(b.tokens, []byte("bench "+benchCaller+" read\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.env = []string{"NATS_URL=" + b.nats, "RAY_ADDRESS=" + b.ray, "LOG_LEVEL=warn", "INTERNAL_TOKEN=" + qpInternalToken}
	return b
}

// ingressEnv is the ingress's environment, every RPC routed to the status function at
// statusURL, with extra.
func (b benchChain) ingressEnv(statusURL string, extra ...string) []string {
	return append(append(append([]string{}, b.env...), extra...),
		"EXECUTE_URL="+statusURL, "STATUS_URL="+statusURL, "LIST_URL="+statusURL, "AUTH_TOKENS_FILE="+b.tokens)
}

// scratchRecord starts a NATS server of its own with the records provisioned and one
// deliberation's record in it, for the benchmarks that read it back.
func scratchRecord(t *testing.T) (natsURL, id string) {
	t.Helper()
	nats := scratchNATS(t)
	_, store := storeAt(t, nats, true)
	id = domain.NewDeliberationID()
	rec := domain.NewRecord(id, domain.Request{Kind: domain.KindDeliberation, TaskID: "t", Role: "r"}, "0123456789abcdef0123456789abcdef", "", "", time.Now())
	if err := store.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	return nats, id
}

func benchKnob(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchProcess runs function name as a plain process on a free port with env and returns
// its address once it accepts connections.
func benchProcess(t *testing.T, name string, env []string) string {
	t.Helper()
	port := testenv.FreePort(t)
	cmd := exec.Command(filepath.Join(binDir, name))
	cmd.Env = append(append([]string{"PATH=" + os.Getenv("PATH")}, env...), "PORT="+strconv.Itoa(port), "HOST=127.0.0.1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	addr := "127.0.0.1:" + strconv.Itoa(port)
	waitAccept(t, addr)
	benchPIDs.Store(addr, cmd.Process.Pid)
	return addr
}

// benchPIDs maps each benchProcess's address to its process id, for cpuSeconds.
var benchPIDs sync.Map

// cpuSeconds is the CPU time (user and system) the processes have used so far, in seconds;
// addrs are benchProcess addresses, pids process ids.
func cpuSeconds(t *testing.T, addrs []string, pids ...int) float64 {
	t.Helper()
	for _, a := range addrs {
		pid, ok := benchPIDs.Load(a)
		if !ok {
			t.Fatalf("no process known at %s", a)
		}
		pids = append(pids, pid.(int))
	}
	var total time.Duration
	for _, pid := range pids {
		total += testenv.ProcCPU(t, pid)
	}
	return total.Seconds()
}

func waitAccept(t *testing.T, addr string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			// Through a pod's relay the dial succeeds before the process listens: ask.
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			_, _ = c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
			n, _ := c.Read(make([]byte, 1))
			c.Close()
			if n > 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing answers at %s", addr)
		}
	}
}

type loadResult struct {
	rps      float64
	p50, p99 time.Duration
}

func medianResult(rs []loadResult) loadResult {
	s := append([]loadResult{}, rs...)
	sort.Slice(s, func(i, j int) bool { return s[i].rps < s[j].rps })
	return s[len(s)/2]
}

// closedLoop runs n workers calling call back to back for d and summarises the latencies.
func closedLoop(t *testing.T, n int, d time.Duration, call func() error) loadResult {
	t.Helper()
	var mu sync.Mutex
	var lat []time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(d)
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for time.Now().Before(stop) {
				t0 := time.Now()
				if err := call(); err != nil {
					t.Error(err)
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if len(lat) == 0 {
		t.Fatal("no request succeeded")
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return loadResult{rps: float64(len(lat)) / el.Seconds(), p50: lat[len(lat)/2], p99: lat[len(lat)*99/100]}
}

func chainLoad(t *testing.T, addr, caller, id string, n int, d time.Duration) loadResult {
	t.Helper()
	// Four connections, as the historical chain benchmark used.
	var clients []pb.RayExecutorServiceClient
	for i := 0; i < 4; i++ {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		clients = append(clients, pb.NewRayExecutorServiceClient(conn))
	}
	ctx := bearer(caller)
	var next sync.Mutex
	turn := 0
	return closedLoop(t, n, d, func() error {
		next.Lock()
		c := clients[turn%len(clients)]
		turn++
		next.Unlock()
		resp, err := c.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: id})
		if err == nil && resp.GetDeliberationId() != id {
			err = fmt.Errorf("answer for %q", resp.GetDeliberationId())
		}
		return err
	})
}

func functionLoad(t *testing.T, c *rpcevents.Client, url, id string, n int, d time.Duration) loadResult {
	t.Helper()
	return closedLoop(t, n, d, func() error {
		var resp pb.GetDeliberationStatusResponse
		return c.Call(context.Background(), url, rpcevents.TypeGetDeliberationStatus,
			&pb.GetDeliberationStatusRequest{DeliberationId: id}, rpcevents.CallOptions{}, &resp)
	})
}

func benchTransport() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 512
	return tr
}
