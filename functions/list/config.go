package list

import (
	"github.com/fleet-ai/ray-executor/shared/config"
)

// Config is everything the list function reads from its environment.
type Config struct {
	Serving config.Serving
	Ray     config.Ray
	// MaxBodyBytes (MAX_BODY_BYTES) bounds a request event.
	MaxBodyBytes int64
	// Source (CE_SOURCE) names this function in reply events.
	Source string
}

// LoadConfig reads and checks the configuration.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := config.NewReader(getenv)
	cfg := Config{
		Serving:      config.ReadServing(r, 8083),
		Ray:          config.ReadRay(r),
		MaxBodyBytes: int64(r.Int("MAX_BODY_BYTES", 64<<10)),
		Source:       r.String("CE_SOURCE", "ray-executor/list"),
	}
	return cfg, r.Err()
}
