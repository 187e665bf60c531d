package executor

import (
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fleet-ai/ray-executor/shared/executor/payload"
	"github.com/fleet-ai/ray-executor/shared/natsbus"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
)

// Settings are the operator's choices for the executor, read by every function that may
// deploy it (execute, list) and passed to it in its Ray job's environment.
type Settings struct {
	MinReplicas        int     // EXECUTOR_MIN_REPLICAS: replicas kept when idle
	MaxReplicas        int     // EXECUTOR_MAX_REPLICAS: replicas a backlog may scale to
	ReplicaConcurrency int     // EXECUTOR_REPLICA_CONCURRENCY: deliberations in flight per replica
	MaxDeliveries      int     // EXECUTOR_MAX_DELIVERIES: deliveries before executor_lost
	ReplicaNumCPUs     float64 // EXECUTOR_REPLICA_NUM_CPUS: CPUs Ray reserves per replica
	DriverNumCPUs      float64 // EXECUTOR_DRIVER_NUM_CPUS: CPUs reserved for the job's driver
	// LogLevel (EXECUTOR_LOG_LEVEL: debug, info or warning; default info) is the executor's:
	// at info its log grows with events, not with load (Ray never rotates a job's driver log,
	// which holds the replicas' lines too); debug adds a line as each deliberation starts
	// and ends.
	LogLevel string
	// NATSURL is the NATS address the executor dials from the cluster (PAYLOAD_NATS_URL,
	// default NATS_URL).
	NATSURL string
	// Check is how often a function makes sure the executor runs (EXECUTOR_CHECK_INTERVAL).
	Check time.Duration
	// Deploy (EXECUTOR_DEPLOY, default true) lets the functions submit, resubmit and roll the
	// executor. false: operators run it themselves (a KubeRay RayJob with the environment of
	// Settings.Env), and the functions only report its heartbeat.
	Deploy bool
	// Telemetry is the executor's share of the standard OTEL_* variables: where it exports
	// spans and metrics (OTEL_EXPORTER_OTLP_ENDPOINT, _TRACES_ENDPOINT, _METRICS_ENDPOINT,
	// _PROTOCOL) and how often (OTEL_BSP_SCHEDULE_DELAY, OTEL_METRIC_EXPORT_INTERVAL).
	// Never OTEL_EXPORTER_OTLP_HEADERS: they may hold a key, and a job's environment is
	// readable from the Ray dashboard; give the Ray pods their own.
	Telemetry map[string]string
}

// readTelemetry reads the OTEL_* variables passed on to the executor job (each name
// literal: knative/validate reads them from this source).
func readTelemetry(r *config.Reader) map[string]string {
	out := map[string]string{}
	put := func(name, v string) {
		if v != "" {
			out[name] = v
		}
	}
	put("OTEL_EXPORTER_OTLP_ENDPOINT", r.String("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
	put("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", r.String("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ""))
	put("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", r.String("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", ""))
	put("OTEL_EXPORTER_OTLP_PROTOCOL", r.String("OTEL_EXPORTER_OTLP_PROTOCOL", ""))
	put("OTEL_BSP_SCHEDULE_DELAY", r.String("OTEL_BSP_SCHEDULE_DELAY", ""))
	put("OTEL_METRIC_EXPORT_INTERVAL", r.String("OTEL_METRIC_EXPORT_INTERVAL", ""))
	return out
}

// ReadSettings reads the EXECUTOR_* settings.
func ReadSettings(r *config.Reader, natsURL string) Settings {
	s := Settings{
		MinReplicas:        r.Int("EXECUTOR_MIN_REPLICAS", 1),
		MaxReplicas:        r.Int("EXECUTOR_MAX_REPLICAS", 4),
		ReplicaConcurrency: r.Int("EXECUTOR_REPLICA_CONCURRENCY", 64),
		MaxDeliveries:      r.Int("EXECUTOR_MAX_DELIVERIES", 3),
		ReplicaNumCPUs:     r.Float("EXECUTOR_REPLICA_NUM_CPUS", 0),
		DriverNumCPUs:      r.Float("EXECUTOR_DRIVER_NUM_CPUS", 0),
		LogLevel:           strings.ToLower(r.String("EXECUTOR_LOG_LEVEL", "info")),
		NATSURL:            r.String("PAYLOAD_NATS_URL", natsURL),
		Check:              r.Duration("EXECUTOR_CHECK_INTERVAL", 5*time.Second),
		Deploy:             r.Bool("EXECUTOR_DEPLOY", true),
		Telemetry:          readTelemetry(r),
	}
	switch {
	case s.MinReplicas < 1:
		r.Fail("EXECUTOR_MIN_REPLICAS must be at least 1")
	case s.MaxReplicas < s.MinReplicas:
		r.Fail("EXECUTOR_MAX_REPLICAS must be at least EXECUTOR_MIN_REPLICAS")
	case s.ReplicaConcurrency < 1 || s.ReplicaConcurrency > 10000:
		r.Fail("EXECUTOR_REPLICA_CONCURRENCY must be between 1 and 10000")
	case s.MaxDeliveries < 1:
		r.Fail("EXECUTOR_MAX_DELIVERIES must be at least 1")
	case s.ReplicaNumCPUs < 0 || s.DriverNumCPUs < 0:
		r.Fail("EXECUTOR_REPLICA_NUM_CPUS and EXECUTOR_DRIVER_NUM_CPUS must not be negative")
	case s.Check <= 0:
		r.Fail("EXECUTOR_CHECK_INTERVAL must be positive")
	case s.LogLevel != "debug" && s.LogLevel != "info" && s.LogLevel != "warning":
		r.Fail("EXECUTOR_LOG_LEVEL must be debug, info or warning")
	}
	if s.Deploy && urlHasCredentials(s.NATSURL) {
		// Never printed: the URL holds a secret.
		r.Fail("PAYLOAD_NATS_URL (NATS_URL when it is unset) carries credentials: the executor job's environment is " +
			"readable by anyone with access to the Ray dashboard, so the functions never send it one. Set PAYLOAD_NATS_URL " +
			"to the address alone and give the executor its own least-privilege NATS credential on the cluster " +
			"(RAY_EXECUTOR_NATS_USER and RAY_EXECUTOR_NATS_PASSWORD, the user ray-executor-executor of knative/nats/ray-executor-users.conf, " +
			"or RAY_EXECUTOR_NATS_TOKEN or RAY_EXECUTOR_NATS_CREDS_FILE, in the Ray pods' environment; knative/README.md)")
	}
	return s
}

// urlHasCredentials reports whether any of the comma-separated NATS URLs carries userinfo.
func urlHasCredentials(urls string) bool {
	for _, raw := range strings.Split(urls, ",") {
		if u, err := url.Parse(strings.TrimSpace(raw)); err == nil && u.User != nil {
			return true
		} else if err != nil && strings.Contains(raw, "@") {
			return true // unparseable, but shaped like user@host: do not risk it
		}
	}
	return false
}

// Env is the executor job's environment: where NATS is and what it is called, and the
// EXECUTOR_* settings. Operator settings only, never caller text.
func (s Settings) Env(ev natsbus.Config, rc records.Config) map[string]string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
	env := map[string]string{
		natsbus.PayloadURLEnv:          s.NATSURL,
		natsbus.PayloadEventsStreamEnv: ev.EventsStream,
		"NATS_RECORDS_BUCKET":          rc.Bucket,
		"NATS_WORK_STREAM":             rc.WorkStream,
		"NATS_COUNTERS_STREAM":         rc.CountersStream,
		"RETENTION_SECONDS":            strconv.FormatInt(int64(rc.Retention/time.Second), 10),
		"EXECUTOR_MIN_REPLICAS":        strconv.Itoa(s.MinReplicas),
		"EXECUTOR_MAX_REPLICAS":        strconv.Itoa(s.MaxReplicas),
		"EXECUTOR_REPLICA_CONCURRENCY": strconv.Itoa(s.ReplicaConcurrency),
		"EXECUTOR_MAX_DELIVERIES":      strconv.Itoa(s.MaxDeliveries),
		"EXECUTOR_REPLICA_NUM_CPUS":    f(s.ReplicaNumCPUs),
		"EXECUTOR_LOG_LEVEL":           s.LogLevel,
	}
	for k, v := range s.Telemetry {
		env[k] = v
	}
	return env
}

// NewDeployer is the deployer every function that keeps the executor running builds: the
// embedded payload, uploaded through client, with the environment of s, as the version both
// make (Version).
func NewDeployer(client *ray.Client, store *records.Store, s Settings, ev natsbus.Config, freshFor time.Duration, logger *slog.Logger) *Deployer {
	name, zip := payload.Package()
	env := s.Env(ev, store.Config())
	return &Deployer{
		Store: store, Jobs: client, WorkingDirs: ray.NewPackager(client, name, zip, freshFor),
		Version: Version(env, s.DriverNumCPUs), Env: env, EntrypointNumCPUs: s.DriverNumCPUs, Logger: logger,
	}
}
