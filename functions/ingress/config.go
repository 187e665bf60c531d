package ingress

import (
	"net/url"
	"time"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/events"
)

// DefaultPort is the original service's gRPC port.
const DefaultPort = 50056

// Config is everything the ingress reads from its environment.
type Config struct {
	// Serving: PORT (Knative) or else GRPC_PORT (the original's name), default 50056.
	Serving config.Serving
	// Routes: EXECUTE_URL, STATUS_URL, LIST_URL, the functions' base URLs.
	Routes Routes
	// CallTimeout (CALL_TIMEOUT) bounds a downstream call when the caller set no deadline.
	CallTimeout time.Duration
	// HealthTTL (HEALTH_CACHE_TTL) is how long a readiness check of the functions is reused.
	HealthTTL time.Duration
	// MaxMessageBytes (MAX_MESSAGE_BYTES) bounds a received gRPC message.
	MaxMessageBytes int
	// Reflection (ENABLE_REFLECTION) serves gRPC server reflection, for grpcurl.
	Reflection bool
	// Source (CE_SOURCE) is the source of request events.
	Source string
	// Events: ENABLE_NATS, NATS_* (specs/nats.md), for WatchDeliberation.
	Events events.Config
}

// LoadConfig reads and checks the configuration.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := config.NewReader(getenv)
	port := r.Int("GRPC_PORT", DefaultPort)
	cfg := Config{
		Serving: config.ReadServing(r, port),
		Routes: Routes{
			Execute: r.String("EXECUTE_URL", "http://127.0.0.1:8081"),
			Status:  r.String("STATUS_URL", "http://127.0.0.1:8082"),
			List:    r.String("LIST_URL", "http://127.0.0.1:8083"),
		},
		CallTimeout:     r.Duration("CALL_TIMEOUT", 30*time.Second),
		HealthTTL:       r.Duration("HEALTH_CACHE_TTL", 2*time.Second),
		MaxMessageBytes: r.Int("MAX_MESSAGE_BYTES", 4<<20),
		Reflection:      r.Bool("ENABLE_REFLECTION", true),
		Source:          r.String("CE_SOURCE", "ray-executor/ingress"),
		Events:          events.ReadConfig(r),
	}
	for name, u := range map[string]string{"EXECUTE_URL": cfg.Routes.Execute, "STATUS_URL": cfg.Routes.Status, "LIST_URL": cfg.Routes.List} {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			r.Fail("%s=%q is not an http(s) URL", name, u)
		}
	}
	if cfg.MaxMessageBytes <= 0 {
		r.Fail("MAX_MESSAGE_BYTES must be positive")
	}
	return cfg, r.Err()
}
