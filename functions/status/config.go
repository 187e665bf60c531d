package status

import (
	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

// Config is everything the status function reads from its environment.
type Config struct {
	Serving config.Serving
	// Telemetry: OTEL_* and METRICS_PORT (shared/telemetry).
	Telemetry telemetry.Config
	// CacheSize (RESULT_CACHE_SIZE) is how many finished deliberations are kept in memory,
	// in at most CacheBytes (RESULT_CACHE_BYTES) of it.
	CacheSize, CacheBytes int
	// MaxBodyBytes (MAX_BODY_BYTES) bounds a request event.
	MaxBodyBytes int64
	// Source (CE_SOURCE) names this function in reply events.
	Source string
	// Access: INTERNAL_TOKEN(_FILE), INTERNAL_AUTH_OPEN_TYPES, INTERNAL_AUTH_REQUIRED and
	// MAX_INFLIGHT, who may call the function and how much it takes on at once.
	Access rpcevents.Access
	// Events: ENABLE_NATS, NATS_* (specs/nats.md): the records store and the events bus.
	Events natsbus.Config
	// ReadConnections (NATS_READ_CONNECTIONS, 1 to 16) is how many NATS connections status
	// reads records over (records.Store.SpreadReads).
	ReadConnections int
	// Records: NATS_RECORDS_BUCKET, NATS_WORK_STREAM, NATS_COUNTERS_STREAM, RETENTION.
	Records records.Config
}

// LoadConfig reads and checks the configuration.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := config.NewReader(getenv)
	cfg := Config{
		Serving:      config.ReadServing(r, 8082),
		Telemetry:    telemetry.Read(r, "ray-executor-status"),
		CacheSize:    r.Int("RESULT_CACHE_SIZE", defaultCacheSize),
		CacheBytes:   r.Int("RESULT_CACHE_BYTES", defaultCacheBytes),
		MaxBodyBytes: int64(r.Int("MAX_BODY_BYTES", 64<<10)),
		Source:       r.String("CE_SOURCE", "ray-executor/status"),
		Access:       rpcevents.ReadAccess(r),
		Events:       natsbus.ReadConfig(r),
		Records:      records.ReadConfig(r),

		ReadConnections: r.Int("NATS_READ_CONNECTIONS", 4),
	}
	if cfg.CacheSize <= 0 {
		r.Fail("RESULT_CACHE_SIZE must be positive")
	}
	if cfg.CacheBytes <= 0 {
		r.Fail("RESULT_CACHE_BYTES must be positive")
	}
	if cfg.ReadConnections < 1 || cfg.ReadConnections > 16 {
		r.Fail("NATS_READ_CONNECTIONS must be between 1 and 16")
	}
	return cfg, r.Err()
}
