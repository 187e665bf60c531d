//go:build e2e

package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// rayToken is the test head's token; `make test` starts the head with token authentication
// on (scripts/ray-head.sh), so a head without one is a setup fault, not a pass.
func rayToken(t *testing.T) string {
	t.Helper()
	tok := testenv.RayToken(t)
	if tok == "" {
		t.Fatal("no Ray token: `make test` starts its head with token authentication and sets RAY_AUTH_TOKEN_FILE; " +
			"run the tests through it")
	}
	return tok
}

// The local head `make test` and `make run` start refuses a job submission without its
// token (401) and with another one (403), and no job results from either.
func TestLocalRayHeadRefusesUnauthenticatedSubmission(t *testing.T) {
	t.Parallel()
	addr, tok := testenv.RayAddress(t), rayToken(t)
	id := "unauth-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + "-" + time.Now().Format("150405.000000")
	id = strings.NewReplacer(".", "", "_", "-").Replace(id)
	body := `{"entrypoint":"echo should-never-run","submission_id":"` + id + `"}`
	for _, tt := range []struct {
		name, authorization string
		want                int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"wrong token", "Bearer " + strings.Repeat("0", len(tok)), http.StatusForbidden},
		{"token of another scheme", "Basic " + tok, http.StatusUnauthorized},
	} {
		req, err := http.NewRequest(http.MethodPost, addr+"/api/jobs/", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if tt.authorization != "" {
			req.Header.Set("Authorization", tt.authorization)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		// Ray's own answers differ on the Basic scheme across versions: both refusals count.
		if resp.StatusCode != tt.want && !(tt.want == http.StatusUnauthorized && resp.StatusCode == http.StatusForbidden) {
			t.Errorf("%s: got HTTP %d submitting a job, want %d", tt.name, resp.StatusCode, tt.want)
		}
	}
	rc, err := ray.New(ray.Config{Address: addr, Token: tok})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Job(context.Background(), id); !errors.Is(err, domain.ErrNotFound) {
		t.Errorf("got %v reading the refused job with the right token, want ErrNotFound (nothing submitted)", err)
	}
}

// A missing or wrong token is reported as such, at once: by the Ray client, by a function's
// start-up log, and by GetStatus through the ingress (its ray component). Readiness and
// accepting deliberations do not depend on Ray any more.
func TestWrongRayTokenIsReportedAsSuch(t *testing.T) {
	t.Parallel()
	addr, tok := testenv.RayAddress(t), rayToken(t)
	for _, tt := range []struct {
		name, token, want string
	}{
		{"none", "", ray.MsgTokenRequired},
		{"wrong", strings.Repeat("f", len(tok)), ray.MsgTokenRefused},
	} {
		rc, err := ray.New(ray.Config{Address: addr, Token: tt.token, Retries: -1, BreakerFailures: -1})
		if err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		_, err = rc.Version(context.Background())
		if !errors.Is(err, domain.ErrUnauthenticated) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want ErrUnauthenticated saying %q", tt.name, err, tt.want)
		}
		if took := time.Since(began); took > 2*time.Second {
			t.Errorf("%s: the refusal took %s, want it at once", tt.name, took)
		}
	}

	// Functions with a wrong token: execute and list are ready all the same (NATS is their
	// store; Ray is off the request path), execute accepts, and each says at start-up that
	// Ray refuses its credential. They get a NATS server of their own: this system has no
	// Ray to run an executor on.
	wrong := "RAY_AUTH_TOKEN=" + strings.Repeat("f", len(tok))
	nats := "NATS_URL=" + scratchNATS(t)
	execute := start(t, "execute", wrong, nats)
	list := start(t, "list", wrong, nats)
	status := start(t, "status", nats)
	for _, p := range []*proc{execute, list} {
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(p.out.String(), ray.MsgTokenRefused); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: got no start-up log naming the refused token; output:\n%s", p.name, p.out.String())
			}
		}
	}
	_, llmURL := llm(t)
	c := &rpcevents.Client{HTTP: &http.Client{Timeout: 30 * time.Second}, Source: "e2e-test"}
	var accepted pb.ExecuteDeliberationResponse
	if err := c.Call(context.Background(), execute.url, rpcevents.TypeExecuteDeliberation,
		request(uniqueTask(t), llmURL, "m1"), rpcevents.CallOptions{}, &accepted); err != nil || accepted.GetStatus() != "submitted" {
		t.Errorf("execute with a wrong Ray token: got %v %v, want the deliberation accepted (queued)", &accepted, err)
	}

	// GetStatus through the ingress names the cause in the ray component, and is not healthy.
	client, _ := startIngress(t, execute.url, status.url, list.url, nats)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := client.GetStatus(ctx, &pb.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetStatus() == "healthy" {
		t.Errorf("got healthy with Ray refusing the functions' token, want degraded")
	}
	named := false
	for _, c := range st.GetComponents() {
		if c.GetName() == "ray" && c.GetStatus() != "healthy" && strings.Contains(c.GetMessage(), ray.MsgTokenRefused) {
			named = true
		}
		if c.GetName() == "execute" && c.GetStatus() != "healthy" {
			t.Errorf("got execute %s (%s) with a wrong Ray token, want healthy: accepting needs NATS only", c.GetStatus(), c.GetMessage())
		}
	}
	if !named {
		t.Errorf("got components %v, want the ray component to say %q", st.GetComponents(), ray.MsgTokenRefused)
	}
	for _, p := range []*proc{execute, list} {
		if strings.Contains(p.out.String(), tok) || strings.Contains(p.out.String(), strings.Repeat("f", len(tok))) {
			t.Errorf("got a token in %s's log, want none", p.name)
		}
	}
}
