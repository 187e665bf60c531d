package execute

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// Config is everything the execute function reads from its environment.
type Config struct {
	Serving config.Serving
	Ray     config.Ray
	// Limits: MAX_AGENTS, MAX_DESCRIPTION_BYTES, MAX_METADATA_BYTES,
	// MAX_PROMPT_TEMPLATE_BYTES, MAX_TIMEOUT_SECONDS, MAX_RETRIES.
	Limits domain.Limits
	// AgentNumCPUs (AGENT_NUM_CPUS) is reserved on the cluster per agent task.
	AgentNumCPUs float64
	// EntrypointNumCPUs (ENTRYPOINT_NUM_CPUS) and EntrypointResources
	// (ENTRYPOINT_RESOURCES, "name=amount,...") are reserved per deliberation driver: Ray
	// keeps deliberations beyond what the cluster holds PENDING (ray.JobOptions).
	EntrypointNumCPUs   float64
	EntrypointResources map[string]float64
	// PackageFreshFor (PAYLOAD_PACKAGE_RECHECK) is how long a confirmed payload upload is
	// trusted before the next submission checks Ray still has it.
	PackageFreshFor time.Duration
	// MaxBodyBytes (MAX_BODY_BYTES) bounds a request event.
	MaxBodyBytes int64
	// Source (CE_SOURCE) names this function in reply events.
	Source string
	// Access: INTERNAL_TOKEN(_FILE), INTERNAL_AUTH_OPEN_TYPES, INTERNAL_AUTH_REQUIRED and
	// MAX_INFLIGHT, who may call the function and how much it takes on at once.
	Access rpcevents.Access
	// Events: ENABLE_NATS, NATS_* (specs/nats.md).
	Events events.Config
	// PayloadNATSURL (PAYLOAD_NATS_URL) is NATS as the Ray cluster reaches it; default
	// NATS_URL. It reaches the payload as RAY_EXECUTOR_NATS_URL.
	PayloadNATSURL string
}

// LoadConfig reads and checks the configuration.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := config.NewReader(getenv)
	cfg := Config{
		Serving: config.ReadServing(r, 8081),
		Ray:     config.ReadRay(r),
		Limits: domain.Limits{
			MaxAgents:              r.Int("MAX_AGENTS", 0),
			MaxDescriptionBytes:    r.Int("MAX_DESCRIPTION_BYTES", 0),
			MaxMetadataBytes:       r.Int("MAX_METADATA_BYTES", 0),
			MaxPromptTemplateBytes: r.Int("MAX_PROMPT_TEMPLATE_BYTES", 0),
			MaxTimeoutSeconds:      int32(r.Int("MAX_TIMEOUT_SECONDS", 0)),
			MaxRetries:             int32(r.Int("MAX_RETRIES", 0)),
		},
		AgentNumCPUs: r.Float("AGENT_NUM_CPUS", 0),
		// A quarter CPU per driver: a node with N CPUs runs 4N deliberations at once, and
		// a burst beyond that waits in Ray instead of starving every driver of workers.
		EntrypointNumCPUs: r.Float("ENTRYPOINT_NUM_CPUS", 0.25),
		PackageFreshFor:   r.Duration("PAYLOAD_PACKAGE_RECHECK", ray.DefaultFreshFor),
		MaxBodyBytes:      int64(r.Int("MAX_BODY_BYTES", rpcevents.DefaultMaxBodyBytes)),
		Source:            r.String("CE_SOURCE", "ray-executor/execute"),
		Access:            rpcevents.ReadAccess(r),
		Events:            events.ReadConfig(r),
	}
	cfg.PayloadNATSURL = r.String("PAYLOAD_NATS_URL", cfg.Events.URL)
	// LLM_ENDPOINT_ALLOWLIST: the endpoints requests may aim the workers at (comma-separated
	// URL prefixes; "*" allows any). Unset allows none: no caller picks arbitrary hosts.
	policy, err := domain.ParseEndpointPolicy(r.String("LLM_ENDPOINT_ALLOWLIST", ""))
	if err != nil {
		r.Fail("%v", err)
	}
	cfg.Limits.Endpoints = policy
	res, err := parseResources(r.String("ENTRYPOINT_RESOURCES", ""))
	if err != nil {
		r.Fail("ENTRYPOINT_RESOURCES: %v", err)
	}
	cfg.EntrypointResources = res
	if cfg.EntrypointNumCPUs < 0 {
		r.Fail("ENTRYPOINT_NUM_CPUS must not be negative")
	}
	if cfg.AgentNumCPUs < 0 {
		r.Fail("AGENT_NUM_CPUS must not be negative")
	}
	return cfg, r.Err()
}

// parseResources reads "name=amount,name=amount" (Ray custom resources, amounts > 0).
func parseResources(s string) (map[string]float64, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]float64{}
	for _, part := range strings.Split(s, ",") {
		name, amount, ok := strings.Cut(strings.TrimSpace(part), "=")
		name = strings.TrimSpace(name)
		v, err := strconv.ParseFloat(strings.TrimSpace(amount), 64)
		if !ok || name == "" || err != nil || v <= 0 || math.IsInf(v, 0) {
			return nil, fmt.Errorf("%q is not name=amount with an amount above 0", part)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("resource %q is named twice", name)
		}
		out[name] = v
	}
	return out, nil
}
