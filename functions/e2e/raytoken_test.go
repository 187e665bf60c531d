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
// readiness answer and start-up log, and by GetStatus through the ingress.
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

	wrong := "RAY_AUTH_TOKEN=" + strings.Repeat("f", len(tok))
	list := launch(t, "list", wrong, "ENABLE_NATS=false")
	var ready string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(list.url + "/readyz")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("list became ready with a wrong Ray token")
		}
		ready = string(b)
		break
	}
	if !strings.Contains(ready, ray.MsgTokenRefused) {
		t.Errorf("got readiness answer %q, want it to say %q", ready, ray.MsgTokenRefused)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(list.out.String(), ray.MsgTokenRefused); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("got no start-up log naming the refused token; output:\n%s", list.out.String())
		}
	}
	if strings.Contains(list.out.String(), tok) || strings.Contains(list.out.String(), strings.Repeat("f", len(tok))) {
		t.Error("got a token in the function's log, want none")
	}

	// GetStatus through the ingress names the cause.
	good := shared(t)
	client, _ := startIngress(t, good.execute.url, good.status.url, list.url)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := client.GetStatus(ctx, &pb.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetStatus() == "healthy" {
		t.Errorf("got healthy with the list function refused by Ray, want degraded or unhealthy")
	}
	named := false
	for _, c := range st.GetComponents() {
		if c.GetName() == "list" && strings.Contains(c.GetMessage(), ray.MsgTokenRefused) {
			named = true
		}
	}
	if !named {
		t.Errorf("got components %v, want the list component to say %q", st.GetComponents(), ray.MsgTokenRefused)
	}
}
