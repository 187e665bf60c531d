package execute

import (
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/records"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestConfigDefaults(t *testing.T) {
	cfg, err := LoadConfig(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxBodyBytes != rpcevents.DefaultMaxBodyBytes || cfg.Source != "ray-executor/execute" || cfg.Serving.Port != 8081 {
		t.Errorf("got body %d, source %q, port %d", cfg.MaxBodyBytes, cfg.Source, cfg.Serving.Port)
	}
	if cfg.Records.Bucket != records.DefaultBucket || cfg.Records.WorkStream != records.DefaultWorkStream ||
		cfg.Records.CountersStream != records.DefaultCountersStream || cfg.Records.Retention != 7*24*time.Hour {
		t.Errorf("got records %+v", cfg.Records)
	}
	if cfg.Executor.MinReplicas != 1 || cfg.Executor.NATSURL != cfg.Events.URL || cfg.Executor.Check != 5*time.Second {
		t.Errorf("got executor settings %+v", cfg.Executor)
	}
	if cfg.Limits.Endpoints.Allows("http://127.0.0.1:8000") {
		t.Error("an unset LLM_ENDPOINT_ALLOWLIST must allow no endpoint")
	}
	cfg, err = LoadConfig(env(map[string]string{"NATS_URL": "nats://n:4222", "PAYLOAD_NATS_URL": "nats://cluster:4222",
		"NATS_WORK_STREAM": "W", "RETENTION": "48h", "LLM_ENDPOINT_ALLOWLIST": "http://127.0.0.1"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Executor.NATSURL != "nats://cluster:4222" || cfg.Records.WorkStream != "W" || cfg.Records.Retention != 48*time.Hour ||
		!cfg.Limits.Endpoints.Allows("http://127.0.0.1:8000") {
		t.Errorf("got %+v %+v", cfg.Executor, cfg.Records)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"ENABLE_NATS": "false"}, "ENABLE_NATS=false is no longer supported: NATS JetStream holds the deliberation records"},
		{map[string]string{"RETENTION": "10m"}, "RETENTION must be at least 1h"},
		{map[string]string{"EXECUTOR_MIN_REPLICAS": "0"}, "EXECUTOR_MIN_REPLICAS"},
		{map[string]string{"EXECUTOR_MIN_REPLICAS": "2", "EXECUTOR_MAX_REPLICAS": "1"}, "EXECUTOR_MAX_REPLICAS"},
		{map[string]string{"EXECUTOR_REPLICA_CONCURRENCY": "0"}, "EXECUTOR_REPLICA_CONCURRENCY"},
		{map[string]string{"EXECUTOR_MAX_DELIVERIES": "0"}, "EXECUTOR_MAX_DELIVERIES"},
		{map[string]string{"EXECUTOR_CHECK_INTERVAL": "-1s"}, "EXECUTOR_CHECK_INTERVAL"},
		{map[string]string{"EXECUTOR_DRIVER_NUM_CPUS": "-1"}, "EXECUTOR_DRIVER_NUM_CPUS"},
		{map[string]string{"MAX_AGENTS": "many"}, "MAX_AGENTS"},
		{map[string]string{"LLM_ENDPOINT_ALLOWLIST": "ftp://x"}, "ftp://x"},
	} {
		_, err := LoadConfig(env(tc.env))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want an error with %q", tc.env, err, tc.want)
		}
	}
}
