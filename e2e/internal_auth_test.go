//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// internalToken is the credential the functions of TestFunctionsRequireTheInternalCredential
// share; it must never show up in their logs.
const internalToken = "e2e-internal-token-5f0c2d9a41b7"

// rawCall posts a request event in binary mode (structured when ceType is empty: body is
// then the whole envelope) with the given Authorization header, if any.
func rawCall(t *testing.T, url, ceType, body, authorization string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ceType == "" {
		req.Header.Set("Content-Type", "application/cloudevents+json")
	} else {
		for k, v := range ceHeaders(ceType) {
			req.Header.Set(k, v)
		}
		req.Header.Set("Content-Type", "application/json")
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST %s %s: %v", url, ceType, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// checkRefused fails unless the answer is the functions' 401.
func checkRefused(t *testing.T, what string, code int, h http.Header, body []byte) {
	t.Helper()
	if code != http.StatusUnauthorized {
		t.Errorf("%s: got %d %s, want 401", what, code, body)
		return
	}
	if !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("%s: WWW-Authenticate %q, want a Bearer challenge", what, h.Get("WWW-Authenticate"))
	}
	var eb rpcevents.ErrorBody
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error.Code != "unauthenticated" || eb.Error.Message == "" {
		t.Errorf("%s: body %s, want a JSON error with code unauthenticated", what, body)
	}
}

// The functions started with INTERNAL_TOKEN refuse every caller without it, before anything
// is accepted; with it, they work as ever; the types left open (what Knative Eventing
// delivers) pass without it; the probes stay open for the kubelet.
func TestFunctionsRequireTheInternalCredential(t *testing.T) {
	t.Parallel()
	token := "INTERNAL_TOKEN=" + internalToken
	s := &system{
		execute: start(t, "execute", token),
		status:  start(t, "status", token),
		list: start(t, "list", token, "INTERNAL_AUTH_OPEN_TYPES="+rpcevents.TypePing+","+rpcevents.TypeReconcile,
			"INTERNAL_AUTH_REQUIRED=true", "MAX_INFLIGHT=64"),
		client: &rpcevents.Client{HTTP: &http.Client{Timeout: 30 * time.Second}, Source: "e2e-test", Token: internalToken},
	}
	s.ray, s.bus, s.store, s.natsURL = shared(t).ray, shared(t).bus, shared(t).store, natsURL
	stub, llmURL := llm(t)
	task := uniqueTask(t)
	submission, err := protojson.Marshal(request(task, llmURL, "model-a"))
	if err != nil {
		t.Fatal(err)
	}
	wrong := "Bearer " + strings.Repeat("x", len(internalToken))

	t.Run("without or with a wrong credential: 401, nothing submitted", func(t *testing.T) {
		for _, c := range []struct {
			what, url, ceType, body, auth string
		}{
			{"execute, none", s.execute.url, rpcevents.TypeExecuteDeliberation, string(submission), ""},
			{"execute, wrong", s.execute.url, rpcevents.TypeExecuteDeliberation, string(submission), wrong},
			{"execute, token without scheme", s.execute.url, rpcevents.TypeExecuteDeliberation, string(submission), internalToken},
			{"execute, structured, none", s.execute.url, "", `{"specversion":"1.0","id":"e1","source":"test","type":"` +
				rpcevents.TypeExecuteDeliberation + `","datacontenttype":"application/json","data":` + string(submission) + `}`, ""},
			{"cancel, none", s.execute.url, rpcevents.TypeCancelDeliberation, `{"deliberation_id":"delib-x"}`, ""},
			{"status, none", s.status.url, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"delib-unknown"}`, ""},
			{"status, wrong", s.status.url, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"delib-unknown"}`, wrong},
			{"list, none", s.list.url, rpcevents.TypeGetActiveJobs, `{}`, ""},
			{"list GetStatus, wrong", s.list.url, rpcevents.TypeGetStatus, `{}`, wrong},
		} {
			code, h, body := rawCall(t, c.url, c.ceType, c.body, c.auth)
			checkRefused(t, c.what, code, h, body)
		}
		// The client without the token gets the sentinel the ingress maps.
		anon := &rpcevents.Client{HTTP: &http.Client{Timeout: 30 * time.Second}, Source: "e2e-test"}
		err := anon.Call(context.Background(), s.status.url, rpcevents.TypeGetDeliberationStatus,
			&pb.GetDeliberationStatusRequest{DeliberationId: "delib-unknown"}, rpcevents.CallOptions{}, &pb.GetDeliberationStatusResponse{})
		if !errors.Is(err, domain.ErrUnauthenticated) {
			t.Errorf("client without token: got %v, want ErrUnauthenticated", err)
		}

		if n := len(s.recordsForTask(t, task)); n != 0 {
			t.Errorf("%d deliberations were accepted from a caller without the credential", n)
		}
		if n := len(stub.Calls()); n != 0 {
			t.Errorf("LLM calls: got %d, want none", n)
		}
	})

	t.Run("probes stay open", func(t *testing.T) {
		for _, p := range []*proc{s.execute, s.status, s.list} {
			for _, path := range []string{"/healthz", "/readyz"} {
				resp, err := http.Get(p.url + path)
				if err != nil {
					t.Fatalf("%s %s: %v", p.name, path, err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("%s %s without a credential: got %d, want 200", p.name, path, resp.StatusCode)
				}
			}
		}
	})

	t.Run("open types pass without the credential", func(t *testing.T) {
		if code, _, body := rawCall(t, s.list.url, rpcevents.TypePing, `{}`, ""); code != http.StatusAccepted {
			t.Errorf("PingSource event without a credential: got %d %s, want 202", code, body)
		}
		envelope := `{"specversion":"1.0","id":"r1","source":"test","type":"` + rpcevents.TypeReconcile + `"}`
		if code, _, body := rawCall(t, s.list.url, "", envelope, ""); code != http.StatusAccepted {
			t.Errorf("structured Reconcile without a credential: got %d %s, want 202", code, body)
		}
	})

	t.Run("with the credential: status, list, and a deliberation end to end", func(t *testing.T) {
		if st := s.statusOf(t, s.status.url, "delib-never-was"); st.GetStatus() != "not_found" {
			t.Errorf("status of an unknown id: got %q, want not_found", st.GetStatus())
		}
		_ = s.activeJobs(t)
		resp, err := s.submit(t, request(task, llmURL, "model-a"), rpcevents.CallOptions{})
		if err != nil {
			t.Fatalf("ExecuteDeliberation with the credential: %v", err)
		}
		if st := s.waitDone(t, s.status.url, resp.GetDeliberationId()); st.GetStatus() != "completed" {
			t.Errorf("deliberation: got %q (%s), want completed", st.GetStatus(), st.GetErrorMessage())
		}
		if n := len(stub.Calls()); n != 1 {
			t.Errorf("LLM calls: got %d, want 1", n)
		}
	})

	for _, p := range []*proc{s.execute, s.status, s.list} {
		if strings.Contains(p.out.String(), internalToken) {
			t.Errorf("%s logged the internal token", p.name)
		}
	}
}

// A function told INTERNAL_AUTH_REQUIRED refuses to start without a token rather than run
// open.
func TestFunctionWithoutRequiredTokenDoesNotStart(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"execute", "status", "list"} {
		out, err := runToExit(t, name, "INTERNAL_AUTH_REQUIRED=true")
		if err == nil || !strings.Contains(out, "INTERNAL_AUTH_REQUIRED") {
			t.Errorf("%s with INTERNAL_AUTH_REQUIRED and no token: got %v, output %q; want it to exit naming the setting", name, err, out)
		}
	}
}

// runToExit runs function name with env, expecting it to exit on its own, and returns its
// output and exit error.
func runToExit(t *testing.T, name string, env ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, name))
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "PORT=0", "HOST=127.0.0.1",
		"RAY_ADDRESS=" + testenv.RayAddress(t), "RAY_AUTH_TOKEN_FILE=" + os.Getenv("RAY_AUTH_TOKEN_FILE"), "NATS_URL=" + natsURL}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
