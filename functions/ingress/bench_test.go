//go:build bench

// The ingress benchmark: `make bench`. It measures, in one run on this machine,
//
//	(a) the floor: a bare gRPC server answering GetDeliberationStatus itself;
//	(b) the chain: ingress -> status function (CloudEvents over HTTP) -> a zero-latency Ray
//	    stub, every hop over real loopback TCP;
//
// each at full load (closed loop, fixed concurrency) and at a fixed 500 requests/s (open
// loop), and prints RPS, p50 and p99 and the chain/floor ratios.
package ingress

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/fleet-ai/ray-executor/functions/status"
	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/serving"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// floorServer answers GetDeliberationStatus with what the chain answers, without any hop.
type floorServer struct {
	pb.UnimplementedRayExecutorServiceServer
}

func (floorServer) GetDeliberationStatus(_ context.Context, req *pb.GetDeliberationStatusRequest) (*pb.GetDeliberationStatusResponse, error) {
	return &pb.GetDeliberationStatusResponse{DeliberationId: req.GetDeliberationId(), Status: "running", TaskId: "task-bench", TotalAgents: 3}, nil
}

// benchRecord is the deliberation every benchmark request reads: running, three agents.
func benchRecord() domain.Record {
	r := domain.Request{Kind: domain.KindDeliberation, TaskID: "task-bench", Agents: make([]domain.Agent, 3),
		Constraints: domain.Constraints{TimeoutSeconds: 60}}
	rec, _ := domain.NewRecord("delib-bench", r, "0123456789abcdef0123456789abcdef", "", "", time.Now()).Start(1, "bench", time.Now())
	return rec
}

func serveGRPC(t *testing.T, register func(*grpc.Server), opts ...grpc.ServerOption) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(opts...)
	register(gs)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	return ln.Addr().String()
}

// memoryRecords is the zero-latency store: the status function's records port answered in
// memory.
type memoryRecords struct{ rec domain.Record }

func (m memoryRecords) Get(context.Context, string) (domain.Record, uint64, error) {
	return m.rec, 1, nil
}

// chain starts the status function (served as in production) in front of a records store,
// and the ingress in front of it; it returns the ingress address. overNATS reads the record
// from a real NATS server (in this process) through the real records store, so the NATS
// hop's own cost is counted too.
func chain(t *testing.T, overNATS bool) string {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var recs status.Records = memoryRecords{rec: benchRecord()}
	if overNATS {
		bus := testenv.NATS(t)
		store := records.New(bus.Conn(), bus.JetStream(), records.Config{})
		if err := store.Provision(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := store.Create(context.Background(), benchRecord()); err != nil {
			t.Fatal(err)
		}
		recs = store
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	addrc := make(chan string, 1)
	h := status.NewHandler(status.NewService(recs, 1024, 0), "bench/status", 0, quiet)
	go func() {
		_ = serving.Run(ctx, config.Serving{Host: "127.0.0.1", DrainTimeout: time.Second}, h, quiet,
			serving.Options{OnListen: func(a string) { addrc <- a }})
	}()
	statusURL := "http://" + <-addrc
	hc := NewHTTPClient()
	srv := &Server{
		Caller:         &rpcevents.Client{HTTP: hc, Source: "bench", Protobuf: true},
		Routes:         Routes{Status: statusURL},
		Health:         &Health{HTTP: hc},
		DefaultTimeout: 10 * time.Second,
		Logger:         quiet,
		Started:        time.Now(),
	}
	return serveGRPC(t, func(gs *grpc.Server) { pb.RegisterRayExecutorServiceServer(gs, srv) }, ServerOptions(Config{MaxMessageBytes: 4 << 20}, NewAccessLog(slog.New(slog.DiscardHandler)))...)
}

type result struct {
	n        int
	errors   int
	elapsed  time.Duration
	p50, p99 time.Duration
}

func (r result) rps() float64 { return float64(r.n) / r.elapsed.Seconds() }

func percentiles(lat []time.Duration) (time.Duration, time.Duration) {
	if len(lat) == 0 {
		return 0, 0
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)*50/100], lat[len(lat)*99/100]
}

func clients(t *testing.T, addr string, conns int) []pb.RayExecutorServiceClient {
	var out []pb.RayExecutorServiceClient
	for i := 0; i < conns; i++ {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		out = append(out, pb.NewRayExecutorServiceClient(conn))
	}
	return out
}

func call(c pb.RayExecutorServiceClient) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: "delib-bench"})
	return err
}

// closedLoop runs workers that each call back to back for d.
func closedLoop(t *testing.T, addr string, workers int, d time.Duration) result {
	runtime.GC() // each run starts from a clean heap, as testing.B does
	cs := clients(t, addr, 4)
	for i := 0; i < 200; i++ { // warm connections and pools
		_ = call(cs[i%len(cs)])
	}
	var mu sync.Mutex
	var all []time.Duration
	errs := 0
	start := time.Now()
	stop := start.Add(d)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(c pb.RayExecutorServiceClient) {
			defer wg.Done()
			var lat []time.Duration
			e := 0
			for time.Now().Before(stop) {
				t0 := time.Now()
				if err := call(c); err != nil {
					e++
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			errs += e
			mu.Unlock()
		}(cs[w%len(cs)])
	}
	wg.Wait()
	r := result{n: len(all), errors: errs, elapsed: time.Since(start)}
	r.p50, r.p99 = percentiles(all)
	return r
}

// openLoop sends rate requests per second for d, each on schedule whatever the others do.
func openLoop(t *testing.T, addr string, rate int, d time.Duration) result {
	runtime.GC()
	cs := clients(t, addr, 4)
	for i := 0; i < 200; i++ {
		_ = call(cs[i%len(cs)])
	}
	total := int(d.Seconds() * float64(rate))
	lat := make([]time.Duration, total)
	failed := make([]bool, total)
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < total; i++ {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			t0 := time.Now()
			failed[i] = call(cs[i%len(cs)]) != nil
			lat[i] = time.Since(t0)
		}(i)
	}
	wg.Wait()
	r := result{n: total, elapsed: time.Since(start)}
	var ok []time.Duration
	for i, l := range lat {
		if failed[i] {
			r.errors++
		} else {
			ok = append(ok, l)
		}
	}
	r.p50, r.p99 = percentiles(ok)
	return r
}

// median is the round with the median throughput.
func median(rs []result) result {
	sort.Slice(rs, func(i, j int) bool { return rs[i].rps() < rs[j].rps() })
	return rs[len(rs)/2]
}

func medianFloat(xs []float64) float64 {
	sort.Float64s(xs)
	return xs[len(xs)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func TestBenchmarkReport(t *testing.T) {
	d := time.Duration(envInt("BENCH_SECONDS", 3)) * time.Second
	workers := envInt("BENCH_CONCURRENCY", 32)
	rate := envInt("BENCH_RATE", 500)
	floor := serveGRPC(t, func(gs *grpc.Server) { pb.RegisterRayExecutorServiceServer(gs, floorServer{}) })
	ingress := chain(t, false)
	ingressNATS := chain(t, true)

	if os.Getenv("BENCH_ONLY") == "chain" { // for profiling the chain alone
		for i := 0; i < 3; i++ {
			r := closedLoop(t, ingress, workers, d)
			fmt.Printf("chain only: %.0f RPS, p50 %s, p99 %s\n", r.rps(), ms(r.p50), ms(r.p99))
		}
		return
	}
	// Interleaved rounds, so that drift in the machine's speed hits every setup alike; the
	// median round of each is reported.
	rounds := envInt("BENCH_ROUNDS", 5)
	var fs, cs, hs []result
	for i := 0; i < rounds; i++ {
		fs = append(fs, closedLoop(t, floor, workers, d))
		cs = append(cs, closedLoop(t, ingress, workers, d))
		hs = append(hs, closedLoop(t, ingressNATS, workers, d))
		fmt.Printf("round %d: RPS (a) %.0f (b) %.0f (c) %.0f\n", i+1, fs[i].rps(), cs[i].rps(), hs[i].rps())
	}
	fMax, cMax, hMax := median(fs), median(cs), median(hs)
	var ratios, httpRatios []float64
	for i := range fs {
		ratios = append(ratios, cs[i].rps()/fs[i].rps())
		httpRatios = append(httpRatios, hs[i].rps()/fs[i].rps())
	}
	fRate := openLoop(t, floor, rate, d)
	cRate := openLoop(t, ingress, rate, d)
	hRate := openLoop(t, ingressNATS, rate, d)

	fmt.Printf("\nGetDeliberationStatus, %d s per run, closed loop: median of %d interleaved rounds, GOMAXPROCS=%d\n",
		int(d.Seconds()), rounds, runtimeProcs())
	fmt.Printf("| setup | load | requests | errors | RPS | p50 | p99 |\n|---|---|---|---|---|---|---|\n")
	row := func(name, load string, r result) {
		fmt.Printf("| %s | %s | %d | %d | %.0f | %s | %s |\n", name, load, r.n, r.errors, r.rps(), ms(r.p50), ms(r.p99))
	}
	closed, open := fmt.Sprintf("closed loop, %d concurrent", workers), fmt.Sprintf("open loop, %d req/s", rate)
	row("(a) floor: bare gRPC server", closed, fMax)
	row("(b) chain: ingress -> status -> in-memory records", closed, cMax)
	row("(c) chain with the record read from NATS by the real records store", closed, hMax)
	row("(a) floor: bare gRPC server", open, fRate)
	row("(b) chain: ingress -> status -> in-memory records", open, cRate)
	row("(c) chain with the record read from NATS by the real records store", open, hRate)
	ratio := medianFloat(ratios)
	fmt.Printf("\nthroughput, median of the rounds' ratios: (b)/(a) %.1f%% (target >= 35%%); (c)/(a) %.1f%%\n",
		100*ratio, 100*medianFloat(httpRatios))
	fmt.Printf("p99 at %d req/s: (b) %s (target < 5 ms), (c) %s, floor %s\n", rate, ms(cRate.p99), ms(hRate.p99), ms(fRate.p99))
	if cMax.errors+cRate.errors+fMax.errors+fRate.errors+hMax.errors+hRate.errors > 0 {
		t.Errorf("requests failed during the benchmark")
	}
	if ratio < 0.35 {
		t.Errorf("chain reached %.1f%% of the floor's throughput, want >= 35%%", 100*ratio)
	}
	if cRate.p99 >= 5*time.Millisecond {
		t.Errorf("chain p99 %s at %d req/s, want < 5 ms", ms(cRate.p99), rate)
	}
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
