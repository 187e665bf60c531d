package execute

import (
	"time"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/executor"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

// Config is everything the execute function reads from its environment.
type Config struct {
	Serving config.Serving
	// Telemetry: OTEL_* and METRICS_PORT (shared/telemetry).
	Telemetry telemetry.Config
	Ray       config.Ray
	// Limits: MAX_AGENTS, MAX_DESCRIPTION_BYTES, MAX_METADATA_BYTES,
	// MAX_PROMPT_TEMPLATE_BYTES, MAX_TIMEOUT_SECONDS, MAX_RETRIES.
	Limits domain.Limits
	// PackageFreshFor (PAYLOAD_PACKAGE_RECHECK) is how long a confirmed payload upload is
	// trusted before the next deploy checks Ray still has it.
	PackageFreshFor time.Duration
	// MaxBodyBytes (MAX_BODY_BYTES) bounds a request event.
	MaxBodyBytes int64
	// Source (CE_SOURCE) names this function in reply events.
	Source string
	// Access: INTERNAL_TOKEN(_FILE), INTERNAL_AUTH_OPEN_TYPES, INTERNAL_AUTH_REQUIRED and
	// MAX_INFLIGHT, who may call the function and how much it takes on at once.
	Access rpcevents.Access
	// Events: NATS_* (specs/nats.md). ENABLE_NATS=false is refused: NATS is the store.
	Events natsbus.Config
	// Records: NATS_RECORDS_BUCKET, NATS_WORK_STREAM, NATS_COUNTERS_STREAM, RETENTION
	// (specs/records.md).
	Records records.Config
	// Executor: EXECUTOR_*, PAYLOAD_NATS_URL (NATS as the Ray cluster reaches it; default
	// NATS_URL).
	Executor executor.Settings
}

// LoadConfig reads and checks the configuration.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := config.NewReader(getenv)
	cfg := Config{
		Serving:   config.ReadServing(r, 8081),
		Telemetry: telemetry.Read(r, "ray-executor-execute"),
		Ray:       config.ReadRay(r),
		Limits: domain.Limits{
			MaxAgents:              r.Int("MAX_AGENTS", 0),
			MaxDescriptionBytes:    r.Int("MAX_DESCRIPTION_BYTES", 0),
			MaxMetadataBytes:       r.Int("MAX_METADATA_BYTES", 0),
			MaxPromptTemplateBytes: r.Int("MAX_PROMPT_TEMPLATE_BYTES", 0),
			MaxTimeoutSeconds:      int32(r.Int("MAX_TIMEOUT_SECONDS", 0)),
			MaxRetries:             int32(r.Int("MAX_RETRIES", 0)),
		},
		PackageFreshFor: r.Duration("PAYLOAD_PACKAGE_RECHECK", ray.DefaultFreshFor),
		MaxBodyBytes:    int64(r.Int("MAX_BODY_BYTES", rpcevents.DefaultMaxBodyBytes)),
		Source:          r.String("CE_SOURCE", "ray-executor/execute"),
		Access:          rpcevents.ReadAccess(r),
		Events:          natsbus.ReadConfig(r),
		Records:         records.ReadConfig(r),
	}
	cfg.Executor = executor.ReadSettings(r, cfg.Events.URL)
	// LLM_ENDPOINT_ALLOWLIST: the endpoints requests may aim the workers at (comma-separated
	// URL prefixes; "*" allows any). Unset allows none: no caller picks arbitrary hosts.
	policy, err := domain.ParseEndpointPolicy(r.String("LLM_ENDPOINT_ALLOWLIST", ""))
	if err != nil {
		r.Fail("%v", err)
	}
	cfg.Limits.Endpoints = policy
	return cfg, r.Err()
}
