package ingress

import (
	"math"
	"net/url"
	"strings"
	"time"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
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
	// MaxMessageBytes (MAX_MESSAGE_BYTES) bounds a received gRPC message. The default is
	// gRPC's own 4 MiB, what the original service accepted. It must stay at least the
	// execute function's MAX_BODY_BYTES (2 MiB; the ingress forwards a request as protobuf,
	// the same size): every request execute would take then passes the ingress, and one
	// between the two limits reaches execute, whose 413 names its limit (INVALID_ARGUMENT
	// here). Above this limit grpc-go answers RESOURCE_EXHAUSTED itself, as the original
	// did. A replica holds at most one such message per RPC in flight.
	MaxMessageBytes int
	// MaxConcurrentStreams (MAX_CONCURRENT_STREAMS) bounds the RPCs open at once on one
	// HTTP/2 connection.
	MaxConcurrentStreams int
	// MaxConnectionIdle (MAX_CONNECTION_IDLE) closes a connection with no RPC for that long
	// (gracefully: GOAWAY), so idle clients do not hold connections forever.
	MaxConnectionIdle time.Duration
	// Auth: AUTH_TOKENS(_FILE), TLS_CERT_FILE, TLS_KEY_FILE, TLS_CLIENT_CA_FILE,
	// TLS_CLIENT_NAMES, AUTH_OPEN_HEALTH, AUTH_OPEN_REFLECTION.
	Auth AuthConfig
	// Limits: CALLER_MAX_INFLIGHT, CALLER_SUBMIT_RATE, CALLER_SUBMIT_BURST.
	Limits Limits
	// Conns: MAX_CONNECTIONS_PER_PEER, MAX_CONNECTIONS.
	Conns ConnLimits
	// Telemetry: OTEL_* and METRICS_PORT (shared/telemetry).
	Telemetry telemetry.Config
	// InternalToken (INTERNAL_TOKEN or INTERNAL_TOKEN_FILE) is the credential the functions
	// require of their callers; empty when they rely on cluster-local visibility.
	InternalToken string
	// Reflection (ENABLE_REFLECTION) serves gRPC server reflection, for grpcurl.
	Reflection bool
	// Source (CE_SOURCE) is the source of request events.
	Source string
	// Events: NATS_* (specs/nats.md), for WatchDeliberation; ENABLE_NATS=false is refused.
	Events natsbus.Config
}

// LoadConfig reads and checks the configuration.
func LoadConfig(getenv func(string) string) (Config, error) {
	r := config.NewReader(getenv)
	port := r.Int("GRPC_PORT", DefaultPort)
	cfg := Config{
		Serving:   config.ReadServing(r, port),
		Telemetry: telemetry.Read(r, "ray-executor-ingress"),
		Routes: Routes{
			Execute: r.String("EXECUTE_URL", "http://127.0.0.1:8081"),
			Status:  r.String("STATUS_URL", "http://127.0.0.1:8082"),
			List:    r.String("LIST_URL", "http://127.0.0.1:8083"),
		},
		CallTimeout:          r.Duration("CALL_TIMEOUT", 30*time.Second),
		HealthTTL:            r.Duration("HEALTH_CACHE_TTL", 2*time.Second),
		MaxMessageBytes:      r.Int("MAX_MESSAGE_BYTES", 4<<20),
		MaxConcurrentStreams: r.Int("MAX_CONCURRENT_STREAMS", 1000),
		MaxConnectionIdle:    r.Duration("MAX_CONNECTION_IDLE", 5*time.Minute),
		Reflection:           r.Bool("ENABLE_REFLECTION", true),
		Source:               r.String("CE_SOURCE", "ray-executor/ingress"),
		Events:               natsbus.ReadConfig(r),
		Auth:                 readAuth(r),
		Limits: Limits{
			MaxInflight:      r.Int("CALLER_MAX_INFLIGHT", 64),
			MaxHealthWatches: r.Int("HEALTH_MAX_WATCHES", 100),
			SubmitRate:       r.Float("CALLER_SUBMIT_RATE", 50),
			SubmitBurst:      r.Int("CALLER_SUBMIT_BURST", 100),
		},
		Conns: ConnLimits{
			PerPeer: r.Int("MAX_CONNECTIONS_PER_PEER", 256),
			Total:   r.Int("MAX_CONNECTIONS", 4096),
		},
		InternalToken: r.Secret("INTERNAL_TOKEN"),
	}
	for name, u := range map[string]string{"EXECUTE_URL": cfg.Routes.Execute, "STATUS_URL": cfg.Routes.Status, "LIST_URL": cfg.Routes.List} {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			r.Fail("%s=%q is not an http(s) URL", name, u)
		}
	}
	if cfg.MaxMessageBytes <= 0 {
		r.Fail("MAX_MESSAGE_BYTES must be positive")
	}
	if cfg.MaxConnectionIdle < time.Second {
		r.Fail("MAX_CONNECTION_IDLE must be at least 1s")
	}
	if cfg.MaxConcurrentStreams <= 0 || int64(cfg.MaxConcurrentStreams) > math.MaxUint32 {
		r.Fail("MAX_CONCURRENT_STREAMS must be positive")
	}
	if strings.ContainsAny(cfg.InternalToken, " \t\r\n") {
		r.Fail("INTERNAL_TOKEN must not contain whitespace (it is sent in an HTTP header)")
	}
	if cfg.Conns.PerPeer <= 0 || cfg.Conns.Total < cfg.Conns.PerPeer {
		r.Fail("MAX_CONNECTIONS_PER_PEER must be positive and MAX_CONNECTIONS at least as large")
	}
	if cfg.Limits.MaxInflight <= 0 {
		r.Fail("CALLER_MAX_INFLIGHT must be positive")
	}
	if cfg.Limits.MaxHealthWatches <= 0 {
		r.Fail("HEALTH_MAX_WATCHES must be positive")
	}
	if !(cfg.Limits.SubmitRate > 0) || math.IsInf(cfg.Limits.SubmitRate, 0) {
		r.Fail("CALLER_SUBMIT_RATE must be a positive number of submissions per second")
	}
	if cfg.Limits.SubmitBurst <= 0 {
		r.Fail("CALLER_SUBMIT_BURST must be positive")
	}
	return cfg, r.Err()
}

// readAuth reads who may call. The token list is a secret: errors about it name lines and
// callers, never tokens.
func readAuth(r *config.Reader) AuthConfig {
	a := AuthConfig{
		OpenHealth:     r.Bool("AUTH_OPEN_HEALTH", true),
		OpenReflection: r.Bool("AUTH_OPEN_REFLECTION", false),
	}
	// A tokens file that is named but empty (a Secret key left blank) must not turn access
	// control off: ParseTokens refuses a list that names no caller.
	if text := r.Secret("AUTH_TOKENS"); text != "" || r.String("AUTH_TOKENS_FILE", "") != "" {
		t, err := ParseTokens(text)
		if err != nil {
			r.Fail("%w", err)
		}
		a.Tokens = t
	}
	cert, key, ca := r.String("TLS_CERT_FILE", ""), r.String("TLS_KEY_FILE", ""), r.String("TLS_CLIENT_CA_FILE", "")
	switch {
	case (cert == "") != (key == ""):
		r.Fail("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
	case ca != "" && cert == "":
		r.Fail("TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE: client certificates are asked for only over TLS")
	case cert != "":
		tc, err := LoadTLS(cert, key, ca)
		if err != nil {
			r.Fail("%w", err)
		}
		a.TLS = tc
	}
	if names := r.String("TLS_CLIENT_NAMES", ""); names != "" {
		if ca == "" {
			r.Fail("TLS_CLIENT_NAMES needs TLS_CLIENT_CA_FILE: without client certificates there are no names to check")
		}
		a.ClientNames = map[string]bool{}
		for _, n := range strings.Split(names, ",") {
			if n = strings.TrimSpace(n); n != "" {
				a.ClientNames[n] = true
			}
		}
		if len(a.ClientNames) == 0 {
			r.Fail("TLS_CLIENT_NAMES=%q names nobody (unset it to let in every certificate of the CA)", names)
		}
	}
	return a
}
