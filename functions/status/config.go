package status

import (
	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// Config is everything the status function reads from its environment.
type Config struct {
	Serving config.Serving
	// CacheSize (RESULT_CACHE_SIZE) is how many finished deliberations are kept in memory.
	CacheSize int
	// MaxBodyBytes (MAX_BODY_BYTES) bounds a request event.
	MaxBodyBytes int64
	// Source (CE_SOURCE) names this function in reply events.
	Source string
	// Access: INTERNAL_TOKEN(_FILE), INTERNAL_AUTH_OPEN_TYPES, INTERNAL_AUTH_REQUIRED and
	// MAX_INFLIGHT, who may call the function and how much it takes on at once.
	Access rpcevents.Access
	// Events: ENABLE_NATS, NATS_* (specs/nats.md). With them, a deliberation Ray has lost
	// is reported as such (and answered from its stored events) instead of not_found.
	Events natsbus.Config
	// Records: NATS_RECORDS_BUCKET, NATS_WORK_STREAM, NATS_COUNTERS_STREAM, RETENTION.
	Records records.Config
}

// LoadConfig reads and checks the configuration.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := config.NewReader(getenv)
	cfg := Config{
		Serving:      config.ReadServing(r, 8082),
		CacheSize:    r.Int("RESULT_CACHE_SIZE", 1024),
		MaxBodyBytes: int64(r.Int("MAX_BODY_BYTES", 64<<10)),
		Source:       r.String("CE_SOURCE", "ray-executor/status"),
		Access:       rpcevents.ReadAccess(r),
		Events:       natsbus.ReadConfig(r),
		Records:      records.ReadConfig(r),
	}
	if cfg.CacheSize <= 0 {
		r.Fail("RESULT_CACHE_SIZE must be positive")
	}
	return cfg, r.Err()
}
