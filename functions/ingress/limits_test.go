package ingress

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// clock is a settable time for the limiter.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func fakeClockLimiter(l Limits) (*limiter, *clock) {
	c := &clock{t: time.Unix(1_000_000, 0)}
	lim := newLimiter(l)
	lim.now = c.now
	return lim, c
}

// retryDelay is the RetryInfo of a RESOURCE_EXHAUSTED error, or -1.
func retryDelay(err error) time.Duration {
	for _, d := range status.Convert(err).Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return -1
}

func TestLimiterInflight(t *testing.T) {
	lim, _ := fakeClockLimiter(Limits{MaxInflight: 2})
	r1, err1 := lim.admit("a", false)
	r2, err2 := lim.admit("a", true)
	if err1 != nil || err2 != nil {
		t.Fatalf("got %v %v, want two calls admitted", err1, err2)
	}
	_, err := lim.admit("a", false)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "concurrency limit (2 calls at once)") {
		t.Fatalf("third call: got %v, want ResourceExhausted naming the concurrency limit", err)
	}
	if d := retryDelay(err); d != inflightRetry {
		t.Errorf("got RetryInfo %v, want %v", d, inflightRetry)
	}
	if _, err := lim.admit("b", false); err != nil {
		t.Errorf("another caller: got %v, want admitted", err)
	}
	r1()
	r1() // twice: counted once
	if _, err := lim.admit("a", false); err != nil {
		t.Errorf("after one ended: got %v, want admitted", err)
	}
	if _, err := lim.admit("a", false); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("got %v, want ResourceExhausted again (a double release must not free a slot)", err)
	}
	r2()
}

func TestLimiterSubmitRate(t *testing.T) {
	lim, clk := fakeClockLimiter(Limits{SubmitRate: 2, SubmitBurst: 3})
	for i := range 3 {
		if _, err := lim.admit("a", true); err != nil {
			t.Fatalf("submission %d of the burst: %v", i+1, err)
		}
	}
	_, err := lim.admit("a", true)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "submission rate limit (2/s, bursts of 3); retry in 500ms") {
		t.Fatalf("over the burst: got %v, want ResourceExhausted naming the rate and a retry in 500ms", err)
	}
	if d := retryDelay(err); d != 500*time.Millisecond {
		t.Errorf("got RetryInfo %v, want 500ms", d)
	}
	if _, err := lim.admit("a", false); err != nil {
		t.Errorf("a call that submits nothing: got %v, want admitted", err)
	}
	if _, err := lim.admit("b", true); err != nil {
		t.Errorf("another caller: got %v, want admitted", err)
	}
	// A refused submission spends nothing: after the advertised pause one more is let in.
	for range 5 {
		_, _ = lim.admit("a", true)
	}
	clk.add(500 * time.Millisecond)
	if _, err := lim.admit("a", true); err != nil {
		t.Errorf("after the retry delay: got %v, want admitted", err)
	}
	if _, err := lim.admit("a", true); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("got %v, want ResourceExhausted (one token refilled, one spent)", err)
	}
}

func TestLimiterForgetsIdleCallers(t *testing.T) {
	lim, clk := fakeClockLimiter(Limits{MaxInflight: 5, SubmitRate: 1, SubmitBurst: 300})
	for i := range 100 {
		release, err := lim.admit(fmt.Sprintf("c%d", i), true)
		if err != nil {
			t.Fatal(err)
		}
		release()
	}
	busy, _ := lim.admit("busy", false) // still running when the sweep comes
	if got := lim.size(); got != 101 {
		t.Fatalf("got %d callers, want 101", got)
	}
	// A caller is kept until its bucket would be full again (300 s here), so dropping it
	// forgives nothing.
	clk.add(299 * time.Second)
	if _, err := lim.admit("trigger", false); err != nil {
		t.Fatal(err)
	}
	if got := lim.size(); got != 102 {
		t.Errorf("before the bucket refilled: got %d callers, want all 102 kept", got)
	}
	clk.add(sweepEvery) // the next sweep is due a minute after the last
	release, _ := lim.admit("trigger", false)
	release()
	if got := lim.size(); got != 2 {
		t.Errorf("after the idle time: got %d callers, want 2 (busy and trigger)", got)
	}
	busy()
}

func TestLimiterBoundsTheTable(t *testing.T) {
	lim, clk := fakeClockLimiter(Limits{MaxInflight: 1})
	for i := range maxCallers {
		release, err := lim.admit(fmt.Sprintf("c%d", i), false)
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
		release()
	}
	_, err := lim.admit("one-too-many", false)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "distinct callers") {
		t.Fatalf("got %v, want ResourceExhausted for a full table", err)
	}
	if _, err := lim.admit("c7", false); err != nil {
		t.Errorf("a caller already in the table: got %v, want admitted", err)
	}
	clk.add(2 * time.Minute)
	if _, err := lim.admit("one-too-many", false); err != nil {
		t.Errorf("after the others went idle: got %v, want admitted", err)
	}
	if got := lim.size(); got > 2 {
		t.Errorf("got %d callers after the sweep, want at most 2", got)
	}
}

// blockingCaller holds every call until release is closed, and says when one is waiting.
type blockingCaller struct {
	entered chan string
	release chan struct{}
}

func newBlockingCaller() *blockingCaller {
	return &blockingCaller{entered: make(chan string, 100), release: make(chan struct{})}
}

func (b *blockingCaller) Call(ctx context.Context, _, ceType string, _ proto.Message, _ rpcevents.CallOptions, _ proto.Message) error {
	b.entered <- ceType
	select {
	case <-b.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestInflightLimitOverGRPC(t *testing.T) {
	blocker := newBlockingCaller()
	addr := guarded(t, Config{Limits: Limits{MaxInflight: 2}, Auth: AuthConfig{Tokens: mustTokens(t, testTokens), OpenHealth: true}},
		&Server{Caller: blocker})
	conn := connect(t, addr, nil)
	client := pb.NewRayExecutorServiceClient(conn)

	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := client.GetActiveJobs(withToken(writerToken), &pb.GetActiveJobsRequest{}); err != nil {
				t.Errorf("a held call: %v", err)
			}
		}()
	}
	for range 2 {
		select {
		case <-blocker.entered:
		case <-time.After(5 * time.Second):
			t.Fatal("the held calls never reached the function")
		}
	}
	start := time.Now()
	_, err := client.GetDeliberationStatus(withToken(writerToken), &pb.GetDeliberationStatusRequest{DeliberationId: "delib-1"})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), `caller "writer" is over the per-caller concurrency limit`) {
		t.Errorf("third call: got %v, want ResourceExhausted for caller writer", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refusal took %v: it must not queue", d)
	}
	if retryDelay(err) <= 0 {
		t.Errorf("got no RetryInfo in %v", status.Convert(err).Details())
	}
	if r, err := healthpb.NewHealthClient(conn).Check(withToken(writerToken), &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health while the caller is at its limit: got %v %v, want SERVING (health is not counted)", r, err)
	}
	// Another caller is not held back by writer's calls. Its call is waited for too: the
	// connection closes when the test ends, and a call still answering would see Canceled.
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := client.GetActiveJobs(withToken(otherToken), &pb.GetActiveJobsRequest{}); err != nil {
			t.Errorf("another caller: %v", err)
		}
	}()
	select {
	case <-blocker.entered:
	case <-time.After(5 * time.Second):
		t.Error("another caller's call never reached the function")
	}
	close(blocker.release)
	wg.Wait()
	if _, err := client.GetActiveJobs(withToken(writerToken), &pb.GetActiveJobsRequest{}); err != nil {
		t.Errorf("after the held calls ended: got %v, want OK", err)
	}
}

// blockingWatcher holds a watch open until its context ends.
type blockingWatcher struct{ started chan struct{} }

func (w *blockingWatcher) Watch(ctx context.Context, _ string, _ func(natsbus.Stored) bool) error {
	close(w.started)
	<-ctx.Done()
	return ctx.Err()
}

// An open WatchDeliberation stream counts against its caller until it ends.
func TestStreamCountsAgainstTheCaller(t *testing.T) {
	w := &blockingWatcher{started: make(chan struct{})}
	running := &fakeCaller{CallFn: func(_ context.Context, _, ceType string, _ proto.Message, _ rpcevents.CallOptions, resp proto.Message) error {
		if ceType == rpcevents.TypeGetDeliberationStatus {
			proto.Merge(resp, &pb.GetDeliberationStatusResponse{Status: "running"})
		}
		return nil
	}}
	addr := guarded(t, Config{Limits: Limits{MaxInflight: 1}}, &Server{Caller: running, Events: w})
	conn := connect(t, addr, nil)
	client := pb.NewRayExecutorServiceClient(conn)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := client.WatchDeliberation(ctx, &pb.WatchDeliberationRequest{DeliberationId: "delib-1"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.started:
	case <-time.After(5 * time.Second):
		t.Fatal("the watch never started")
	}
	if _, err := client.GetActiveJobs(context.Background(), &pb.GetActiveJobsRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a call while anonymous's one slot holds a stream: got %v, want ResourceExhausted", err)
	}
	if r, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health while the slot is taken: got %v %v, want SERVING (health is not counted)", r, err)
	}
	cancel()
	_, _ = stream.Recv()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := client.GetActiveJobs(context.Background(), &pb.GetActiveJobsRequest{})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the stream ended: got %v, want OK", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestSubmitRateOverGRPC(t *testing.T) {
	addr := guarded(t, Config{Limits: Limits{SubmitRate: 0.01, SubmitBurst: 2}, Auth: AuthConfig{Tokens: mustTokens(t, testTokens)}}, &Server{})
	client := pb.NewRayExecutorServiceClient(connect(t, addr, nil))
	ctx := withToken(writerToken)
	if _, err := client.ExecuteDeliberation(ctx, &pb.ExecuteDeliberationRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.ExecuteBacklogReviewDeliberation(ctx, &pb.ExecuteBacklogReviewDeliberationRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err := client.ExecuteDeliberation(ctx, &pb.ExecuteDeliberationRequest{})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "submission rate limit (0.01/s, bursts of 2); retry in 1m40s") {
		t.Errorf("third submission: got %v, want ResourceExhausted with a retry in 1m40s", err)
	}
	if d := retryDelay(err); d < 99*time.Second || d > 100*time.Second {
		t.Errorf("got RetryInfo %v, want about 100s", d)
	}
	if _, err := client.ExecuteBacklogReviewDeliberation(ctx, &pb.ExecuteBacklogReviewDeliberationRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a backlog review over the rate: got %v, want ResourceExhausted (both Execute RPCs share it)", err)
	}
	for name, call := range rpcs {
		if writes[name] && name != "CancelDeliberation" {
			continue
		}
		if err := call(ctx, client); err != nil {
			t.Errorf("%s while over the submission rate: got %v, want OK (only submissions are rated)", name, err)
		}
	}
	if _, err := client.ExecuteDeliberation(withToken(otherToken), &pb.ExecuteDeliberationRequest{}); err != nil {
		t.Errorf("another caller: got %v, want OK", err)
	}
}

// Under mutual TLS alone, the certificate's name is the caller the limits count.
func TestLimitsPerCertificate(t *testing.T) {
	f := newMTLS(t)
	addr := f.serve(t, Tokens{}, Limits{SubmitRate: 0.01, SubmitBurst: 1}, &Server{})
	alice := pb.NewRayExecutorServiceClient(connect(t, addr, credentials.NewTLS(f.ca.ClientTLS(t, f.aliceCert, f.aliceKey))))
	bob := pb.NewRayExecutorServiceClient(connect(t, addr, credentials.NewTLS(f.ca.ClientTLS(t, f.bobCert, f.bobKey))))
	if _, err := alice.ExecuteDeliberation(context.Background(), &pb.ExecuteDeliberationRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err := alice.ExecuteDeliberation(context.Background(), &pb.ExecuteDeliberationRequest{})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), `caller "alice"`) {
		t.Errorf("alice's second submission: got %v, want ResourceExhausted for caller alice", err)
	}
	if _, err := bob.ExecuteDeliberation(context.Background(), &pb.ExecuteDeliberationRequest{}); err != nil {
		t.Errorf("bob's first submission: got %v, want OK", err)
	}
}
