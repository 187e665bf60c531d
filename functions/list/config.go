package list

import (
	"time"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/executor"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

// Config is everything the list function reads from its environment.
type Config struct {
	Serving config.Serving
	// Telemetry: OTEL_* and METRICS_PORT (shared/telemetry).
	Telemetry telemetry.Config
	Ray       config.Ray
	// MaxBodyBytes (MAX_BODY_BYTES) bounds a request event.
	MaxBodyBytes int64
	// Source (CE_SOURCE) names this function in reply events.
	Source string
	// Access: INTERNAL_TOKEN(_FILE), INTERNAL_AUTH_OPEN_TYPES, INTERNAL_AUTH_REQUIRED and
	// MAX_INFLIGHT, who may call the function and how much it takes on at once.
	Access rpcevents.Access
	// Events: ENABLE_NATS, NATS_* (specs/nats.md). The reconciler needs them.
	Events natsbus.Config
	// Records: NATS_RECORDS_BUCKET, NATS_WORK_STREAM, NATS_COUNTERS_STREAM, RETENTION.
	Records records.Config
	// Executor: EXECUTOR_*, PAYLOAD_NATS_URL; the reconciler deploys the executor too.
	Executor executor.Settings
	// PackageFreshFor (PAYLOAD_PACKAGE_RECHECK) is how long a confirmed payload upload is trusted.
	PackageFreshFor time.Duration
	// ReconcileInterval (RECONCILE_INTERVAL) runs the reconciler on a timer; 0 leaves it to
	// periodic events (a Knative PingSource in production, so replicas can scale to zero).
	ReconcileInterval time.Duration
}

// LoadConfig reads and checks the configuration.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := config.NewReader(getenv)
	cfg := Config{
		Serving:           config.ReadServing(r, 8083),
		Telemetry:         telemetry.Read(r, "ray-executor-list"),
		Ray:               config.ReadRay(r),
		MaxBodyBytes:      int64(r.Int("MAX_BODY_BYTES", 64<<10)),
		Source:            r.String("CE_SOURCE", "ray-executor/list"),
		Access:            rpcevents.ReadAccess(r),
		Events:            natsbus.ReadConfig(r),
		Records:           records.ReadConfig(r),
		PackageFreshFor:   r.Duration("PAYLOAD_PACKAGE_RECHECK", ray.DefaultFreshFor),
		ReconcileInterval: r.Duration("RECONCILE_INTERVAL", 0),
	}
	cfg.Executor = executor.ReadSettings(r, cfg.Events.URL)
	return cfg, r.Err()
}
