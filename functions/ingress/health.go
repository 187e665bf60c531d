package ingress

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

// Component health strings.
const (
	Healthy   = "healthy"
	Unhealthy = "unhealthy"
	Degraded  = "degraded"
)

// Target is one function whose readiness the ingress checks.
type Target struct {
	Name string // "execute", "status", "list"
	URL  string // the function's base URL; /readyz is appended
}

// Health checks the functions on demand (never on a timer, so functions scaled to zero stay
// at zero until somebody asks) and caches the answer for TTL. A function's readiness probe
// checks Ray itself, so a 503 from it means "up, but Ray does not answer".
type Health struct {
	HTTP    *http.Client
	Targets []Target
	TTL     time.Duration

	mu       sync.Mutex
	checked  time.Time
	last     []Probe
	draining atomic.Bool
}

// Probe is one function's answer.
type Probe struct {
	Target
	Reachable bool   // the function answered at all
	Ready     bool   // it answered 200: it is up and Ray answered it
	Message   string // why not, fit for any caller (no addresses)
	detail    string // the error itself, for the log
}

// Drain marks the ingress as shutting down: health answers NOT_SERVING from now on.
func (h *Health) Drain() { h.draining.Store(true) }

// Probes returns the functions' readiness, at most TTL old.
func (h *Health) Probes(ctx context.Context) []Probe {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.last != nil && time.Since(h.checked) < h.TTL {
		return h.last
	}
	ctx = context.WithoutCancel(ctx) // a caller giving up must not cache failures for others
	out := make([]Probe, len(h.Targets))
	var wg sync.WaitGroup
	for i, t := range h.Targets {
		wg.Add(1)
		go func(i int, t Target) {
			defer wg.Done()
			out[i] = h.probe(ctx, t)
		}(i, t)
	}
	wg.Wait()
	h.last, h.checked = out, time.Now()
	return out
}

func (h *Health) probe(ctx context.Context, t Target) Probe {
	p := Probe{Target: t}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(t.URL, "/")+"/readyz", nil)
	if err != nil {
		p.Message, p.detail = "not a valid URL", err.Error()
		return p
	}
	resp, err := h.HTTP.Do(req)
	if err != nil {
		// The error names the function's address: callers get the class, the log the rest.
		p.Message, p.detail = "unreachable", err.Error()
		if ctx.Err() != nil {
			p.Message = "unreachable: no answer within 3s"
		}
		return p
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	p.Reachable = true
	p.Ready = resp.StatusCode == http.StatusOK
	if !p.Ready {
		p.Message = fmt.Sprintf("%d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return p
}

// Serving reports whether every function is up and Ray answers.
func (h *Health) Serving(ctx context.Context) bool {
	if h.draining.Load() {
		return false
	}
	for _, p := range h.Probes(ctx) {
		if !p.Ready {
			return false
		}
	}
	return true
}

// GetStatus tells the truth: "healthy" only when every function answers ready and the list
// function reports Ray and the executor healthy; "unhealthy" when no deliberation could be
// accepted (execute down or not ready: NATS); "degraded" when something else is wrong
// (Ray, the executor, another function), with the reason in that component's message.
// Statistics come from the list function's counters, so they survive restarts and count
// each deliberation once. Version is the ingress's own build (serving.Commit).
func (s *Server) GetStatus(ctx context.Context, req *pb.GetStatusRequest) (*pb.GetStatusResponse, error) {
	resp := &pb.GetStatusResponse{UptimeSeconds: int64(time.Since(s.Started).Seconds()), Version: serving.Commit()}
	executeOK, othersOK := false, true
	for _, p := range s.Health.Probes(ctx) {
		c := &pb.ComponentHealth{Name: p.Name, Status: Healthy, Message: "ready"}
		switch {
		case !p.Reachable:
			c.Status, c.Message = Unhealthy, p.Message
			s.Logger.Warn("a function does not answer its readiness probe", "function", p.Name, "error", p.detail)
		case !p.Ready:
			// Up, but its dependency (NATS) refuses or does not answer it.
			c.Status, c.Message = Degraded, "up, not ready: "+p.Message
		}
		if p.Name == "execute" {
			executeOK = c.Status == Healthy
		} else if c.Status != Healthy {
			othersOK = false
		}
		resp.Components = append(resp.Components, c)
	}
	var st pb.GetStatusResponse
	if err := s.Caller.Call(ctx, s.Routes.List, rpcevents.TypeGetStatus, req, rpcevents.CallOptions{Caller: CallerOf(ctx)}, &st); err != nil {
		othersOK = false
		s.Logger.Warn("the list function did not answer GetStatus", "error", err.Error())
		resp.Components = append(resp.Components, &pb.ComponentHealth{Name: "stats", Status: Unhealthy,
			Message: "the list function did not answer: " + status.Code(GRPCError(err)).String()})
	} else {
		for _, c := range st.GetComponents() {
			if c.GetStatus() != Healthy {
				othersOK = false
			}
			resp.Components = append(resp.Components, c)
		}
		if req.GetIncludeStats() {
			resp.Stats = st.GetStats()
		}
	}
	switch {
	case !executeOK:
		resp.Status = Unhealthy
	case !othersOK:
		resp.Status = Degraded
	default:
		resp.Status = Healthy
	}
	return resp, nil
}

// healthService is grpc.health.v1 over Health: SERVING for the whole server ("") and for
// RayExecutorService while every function and Ray answer.
type healthService struct {
	healthpb.UnimplementedHealthServer
	h *Health
}

func (hs *healthService) status(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	if service != "" && service != pb.RayExecutorService_ServiceDesc.ServiceName {
		return healthpb.HealthCheckResponse_SERVICE_UNKNOWN, status.Errorf(codes.NotFound, "unknown service %q", service)
	}
	if hs.h.Serving(ctx) {
		return healthpb.HealthCheckResponse_SERVING, nil
	}
	return healthpb.HealthCheckResponse_NOT_SERVING, nil
}

func (hs *healthService) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	st, err := hs.status(ctx, req.GetService())
	if err != nil {
		return nil, err
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

// Watch sends the status at once and then whenever it changes, checking every TTL.
func (hs *healthService) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	var last healthpb.HealthCheckResponse_ServingStatus = -1
	tick := time.NewTicker(max(hs.h.TTL, time.Second))
	defer tick.Stop()
	for {
		st, _ := hs.status(stream.Context(), req.GetService())
		if st != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-tick.C:
		}
	}
}
