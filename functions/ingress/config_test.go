package ingress

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := LoadConfig(envOf(map[string]string{}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Auth.Enabled() || cfg.Auth.TLS != nil {
		t.Errorf("got auth %+v, want off by default", cfg.Auth)
	}
	if !cfg.Auth.OpenHealth || cfg.Auth.OpenReflection {
		t.Errorf("got open health %v, reflection %v; want true, false", cfg.Auth.OpenHealth, cfg.Auth.OpenReflection)
	}
	if want := (Limits{MaxInflight: 64, SubmitRate: 50, SubmitBurst: 100, MaxHealthWatches: 100}); cfg.Limits != want {
		t.Errorf("got limits %+v, want %+v", cfg.Limits, want)
	}
	// Every request the execute function takes (MAX_BODY_BYTES, as protobuf) passes the
	// ingress: a 256 KiB task_description is refused by its own limit, never by the size.
	if cfg.MaxMessageBytes != 4<<20 || cfg.MaxMessageBytes < rpcevents.DefaultMaxBodyBytes {
		t.Errorf("got MAX_MESSAGE_BYTES %d, want 4 MiB, at least execute's MAX_BODY_BYTES (%d)", cfg.MaxMessageBytes, rpcevents.DefaultMaxBodyBytes)
	}
	if cfg.MaxConcurrentStreams != 1000 || cfg.InternalToken != "" {
		t.Errorf("got streams %d, internal token set %v; want 1000 and none", cfg.MaxConcurrentStreams, cfg.InternalToken != "")
	}
}

func TestLoadConfigAuth(t *testing.T) {
	dir := t.TempDir()
	tokensFile := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokensFile, []byte(testTokens), 0o600); err != nil {
		t.Fatal(err)
	}
	internal := filepath.Join(dir, "internal")
	if err := os.WriteFile(internal, []byte("internal-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newMTLS(t)
	cfg, err := LoadConfig(envOf(map[string]string{
		"AUTH_TOKENS_FILE":     tokensFile,
		"INTERNAL_TOKEN_FILE":  internal,
		"TLS_CERT_FILE":        f.serverCert,
		"TLS_KEY_FILE":         f.serverKey,
		"TLS_CLIENT_CA_FILE":   f.ca.CertFile,
		"TLS_CLIENT_NAMES":     " alice, svc.example ,,",
		"AUTH_OPEN_HEALTH":     "false",
		"AUTH_OPEN_REFLECTION": "true",
		"CALLER_MAX_INFLIGHT":  "8",
		"CALLER_SUBMIT_RATE":   "0.5",
		"CALLER_SUBMIT_BURST":  "3",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Auth.Tokens.Len() != 4 || !cfg.Auth.MutualTLS() || !cfg.Auth.Enabled() {
		t.Errorf("got %d token callers, mutual TLS %v; want 4 and on", cfg.Auth.Tokens.Len(), cfg.Auth.MutualTLS())
	}
	if len(cfg.Auth.ClientNames) != 2 || !cfg.Auth.ClientNames["alice"] || !cfg.Auth.ClientNames["svc.example"] {
		t.Errorf("got client names %v, want alice and svc.example", cfg.Auth.ClientNames)
	}
	if cfg.Auth.OpenHealth || !cfg.Auth.OpenReflection {
		t.Errorf("got open health %v, reflection %v; want false, true", cfg.Auth.OpenHealth, cfg.Auth.OpenReflection)
	}
	if cfg.InternalToken != "internal-token-0123456789" {
		t.Errorf("INTERNAL_TOKEN_FILE: got a token of %d characters, want the file's trimmed", len(cfg.InternalToken))
	}
	if want := (Limits{MaxInflight: 8, SubmitRate: 0.5, SubmitBurst: 3, MaxHealthWatches: 100}); cfg.Limits != want {
		t.Errorf("got limits %+v, want %+v", cfg.Limits, want)
	}
}

func TestLoadConfigRefuses(t *testing.T) {
	f := newMTLS(t)
	empty := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	secret := "a-secret-token-0123456789"
	cases := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"bad tokens", map[string]string{"AUTH_TOKENS": "a " + secret + "\nb short"}, `AUTH_TOKENS: line 2: caller "b": token is 5 characters`},
		{"tokens file empty", map[string]string{"AUTH_TOKENS_FILE": empty}, "AUTH_TOKENS: names no caller"},
		{"idle too short", map[string]string{"MAX_CONNECTION_IDLE": "10ms"}, "MAX_CONNECTION_IDLE must be at least 1s"},
		{"no connections per peer", map[string]string{"MAX_CONNECTIONS_PER_PEER": "0"}, "MAX_CONNECTIONS_PER_PEER must be positive"},
		{"fewer in all than per peer", map[string]string{"MAX_CONNECTIONS_PER_PEER": "10", "MAX_CONNECTIONS": "5"}, "MAX_CONNECTIONS at least as large"},
		{"tokens only blank", map[string]string{"AUTH_TOKENS": " \n "}, "AUTH_TOKENS: names no caller"},
		{"tokens file missing", map[string]string{"AUTH_TOKENS_FILE": "/nonexistent/tokens"}, "AUTH_TOKENS_FILE"},
		{"cert without key", map[string]string{"TLS_CERT_FILE": f.serverCert}, "TLS_CERT_FILE and TLS_KEY_FILE must be set together"},
		{"client CA without TLS", map[string]string{"TLS_CLIENT_CA_FILE": f.ca.CertFile}, "TLS_CLIENT_CA_FILE needs TLS_CERT_FILE"},
		{"names without client CA", map[string]string{"TLS_CERT_FILE": f.serverCert, "TLS_KEY_FILE": f.serverKey, "TLS_CLIENT_NAMES": "alice"}, "TLS_CLIENT_NAMES needs TLS_CLIENT_CA_FILE"},
		{"names of nobody", map[string]string{"TLS_CERT_FILE": f.serverCert, "TLS_KEY_FILE": f.serverKey, "TLS_CLIENT_CA_FILE": f.ca.CertFile, "TLS_CLIENT_NAMES": " , "}, "names nobody"},
		{"unreadable cert", map[string]string{"TLS_CERT_FILE": "/nonexistent.pem", "TLS_KEY_FILE": f.serverKey}, "TLS_CERT_FILE/TLS_KEY_FILE"},
		{"zero inflight", map[string]string{"CALLER_MAX_INFLIGHT": "0"}, "CALLER_MAX_INFLIGHT must be positive"},
		{"negative rate", map[string]string{"CALLER_SUBMIT_RATE": "-1"}, "CALLER_SUBMIT_RATE must be a positive"},
		{"NaN rate", map[string]string{"CALLER_SUBMIT_RATE": "NaN"}, "CALLER_SUBMIT_RATE must be a positive"},
		{"zero burst", map[string]string{"CALLER_SUBMIT_BURST": "0"}, "CALLER_SUBMIT_BURST must be positive"},
		{"zero streams", map[string]string{"MAX_CONCURRENT_STREAMS": "0"}, "MAX_CONCURRENT_STREAMS must be positive"},
		{"internal token with a space", map[string]string{"INTERNAL_TOKEN": "internal token 0123456789"}, "INTERNAL_TOKEN must not contain whitespace"},
		{"bad open flag", map[string]string{"AUTH_OPEN_HEALTH": "sometimes"}, "AUTH_OPEN_HEALTH"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig(envOf(tc.env))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "short") {
				t.Errorf("the error shows a token: %v", err)
			}
		})
	}
}
