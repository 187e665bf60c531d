package execute

import (
	"strings"
	"testing"
)

func TestEntrypointReservation(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cfg, err := LoadConfig(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.EntrypointNumCPUs != 0.25 || cfg.EntrypointResources != nil {
		t.Errorf("defaults: got %v CPUs, resources %v; want 0.25 and none", cfg.EntrypointNumCPUs, cfg.EntrypointResources)
	}
	cfg, err = LoadConfig(env(map[string]string{"ENTRYPOINT_NUM_CPUS": "0", "ENTRYPOINT_RESOURCES": " deliberation_slot=1, gpu_pool = 0.5"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.EntrypointNumCPUs != 0 || cfg.EntrypointResources["deliberation_slot"] != 1 || cfg.EntrypointResources["gpu_pool"] != 0.5 {
		t.Errorf("got %v CPUs, resources %v", cfg.EntrypointNumCPUs, cfg.EntrypointResources)
	}
	for _, bad := range []string{"slot", "slot=0", "slot=-1", "=1", "slot=x", "a=1,a=2", "slot=Inf"} {
		_, err := LoadConfig(env(map[string]string{"ENTRYPOINT_RESOURCES": bad}))
		if err == nil || !strings.Contains(err.Error(), "ENTRYPOINT_RESOURCES") {
			t.Errorf("%q: got %v, want an error naming ENTRYPOINT_RESOURCES", bad, err)
		}
	}
	if _, err := LoadConfig(env(map[string]string{"ENTRYPOINT_NUM_CPUS": "-0.5"})); err == nil || !strings.Contains(err.Error(), "ENTRYPOINT_NUM_CPUS") {
		t.Errorf("negative CPUs: got %v", err)
	}
}
