package framework_test

import (
	"os/exec"
	"strings"
	"testing"
)

const (
	module       = "github.com/fleet-ai/ray-executor"
	frameworkMod = "github.com/GoogleCloudPlatform/functions-framework-go"
)

// deps lists the packages pkg links (go list -deps), the module's own without its prefix.
func deps(t *testing.T, pkg string) map[string]bool {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	m := map[string]bool{}
	for _, d := range strings.Fields(string(out)) {
		m[strings.TrimPrefix(d, module+"/")] = true
	}
	return m
}

// The layers of ARCHITECTURE.md's package table: the Ray client knows nothing of records,
// events or the executor; the event catalogue knows nothing of NATS; the records and the
// state machine know nothing of Ray; and no function binary links a test dependency (the
// embedded NATS server, the LLM stand-in, testenv) nor the CLI's libraries.
func TestPackageLayers(t *testing.T) {
	rules := []struct {
		pkg    string
		forbid []string
	}{
		{"shared/ray", []string{"shared/records", "shared/events", "shared/natsbus", "shared/executor", "github.com/nats-io/nats.go"}},
		{"shared/events", []string{"github.com/nats-io/nats.go", "shared/natsbus", "shared/ray"}},
		{"shared/domain", []string{"github.com/nats-io/nats.go", "shared/ray", "net/http"}},
		{"shared/records", []string{"shared/ray", "shared/executor"}},
		{"shared/executor/payload", []string{"shared/ray", "shared/records", "github.com/nats-io/nats.go"}},
	}
	for _, f := range []string{"execute", "status", "list", "ingress"} {
		rules = append(rules, struct {
			pkg    string
			forbid []string
		}{"functions/" + f + "/cmd", []string{"shared/natslocal", "shared/testenv", "shared/llmstub", "github.com/nats-io/nats-server/v2/server",
			// the CLI's libraries stay in the CLI's binary
			"functions/rexctl", "github.com/spf13/cobra", "github.com/charmbracelet/bubbletea", "github.com/charmbracelet/lipgloss"}})
	}
	// The CLI is a client of the ingress only: gRPC, never NATS or Ray.
	rules = append(rules, struct {
		pkg    string
		forbid []string
	}{"functions/rexctl/cmd", []string{"shared/natsbus", "shared/records", "shared/ray", "shared/executor", "github.com/nats-io/nats.go", "shared/testenv"}})
	for _, r := range rules {
		t.Run(r.pkg, func(t *testing.T) {
			d := deps(t, "../../"+r.pkg)
			if len(d) == 0 {
				t.Fatalf("go list -deps ../../%s listed nothing", r.pkg)
			}
			for _, f := range r.forbid {
				if d[f] {
					t.Errorf("%s links %s", r.pkg, f)
				}
			}
		})
	}
}
