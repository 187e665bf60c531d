//go:build e2e

package e2e

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/llmstub"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// A Knative Broker delivery with a valid Eventing OIDC token, through the real execute
// function, NATS and the executor on Ray: the deliberation is owned by the caller the
// Trigger's subject is mapped to, whatever caller the event claims; another caller asking the
// real ingress gets not_found, the owner sees it complete. Only the issuer (the Kubernetes
// API server) is a stand-in.
func TestBrokerDeliveryWithOIDCTokenIsOwnedByTheMappedCaller(t *testing.T) {
	t.Parallel()
	const (
		audience  = "serving.knative.dev/service/ray-executor/execute"
		trigger   = "system:serviceaccount:ray-executor:execute-deliberation-oidc-eventing.knative.dev-trigger"
		eventingT = "eventing-token-0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"
		malloryT  = "mallory-token-1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f"
	)
	sh := shared(t) // the executor on Ray, bound to the shared NATS
	iss := testenv.NewOIDCIssuer(t)
	internal := "INTERNAL_TOKEN=" + internalToken
	s := &system{
		execute: start(t, "execute", internal,
			"EVENTING_OIDC_ISSUER="+iss.URL, "EVENTING_OIDC_AUDIENCE="+audience,
			"EVENTING_OIDC_DISCOVERY_URL="+iss.URL, "EVENTING_OIDC_CA_FILE="+iss.CAFile,
			"EVENTING_OIDC_TOKEN_FILE="+iss.TokenFile, "EVENTING_OIDC_CALLERS="+trigger+" eventing write"),
		status: start(t, "status", internal),
		list:   start(t, "list", internal),
	}
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("eventing "+eventingT+" read\nmallory "+malloryT+" write\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, _ := startGuardedIngressFor(t, s, natsURL, "AUTH_TOKENS_FILE="+tokens, internal)
	client := pb.NewRayExecutorServiceClient(dialIngress(t, addr, insecure.NewCredentials()))

	stub, llmURL := llm(t)
	stub.Script("m1", llmstub.Behavior{})
	task := uniqueTask(t)
	data, err := protojson.Marshal(request(task, llmURL, "m1"))
	if err != nil {
		t.Fatal(err)
	}
	deliver := func(jwt string) (int, []byte) {
		req, err := http.NewRequest(http.MethodPost, s.execute.url, strings.NewReader(string(data)))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range ceHeaders(rpcevents.TypeExecuteDeliberation) {
			req.Header.Set(k, v)
		}
		// What the Broker forwards of a forger's event: caller extensions it has no right to.
		req.Header.Set("ce-rexcaller", "mallory")
		req.Header.Set("ce-rexrole", "admin")
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+jwt)
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body json.RawMessage
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}

	// A token of a subject nobody mapped submits nothing.
	if code, body := deliver(iss.Token(t, "system:serviceaccount:default:curious-pod", audience)); code != http.StatusUnauthorized {
		t.Fatalf("unmapped subject: got %d %s, want 401", code, body)
	}
	if n := len(sh.recordsForTask(t, task)); n != 0 {
		t.Fatalf("%d deliberations accepted from an unmapped subject", n)
	}

	code, body := deliver(iss.Token(t, trigger, audience))
	if code != http.StatusOK {
		t.Fatalf("delivery with the Trigger's token: got %d %s, want 200", code, body)
	}
	var accepted pb.ExecuteDeliberationResponse
	if err := protojson.Unmarshal(body, &accepted); err != nil || accepted.GetDeliberationId() == "" {
		t.Fatalf("reply %s: %v", body, err)
	}
	id := accepted.GetDeliberationId()
	if owner := sh.record(t, id).Owner; owner != "eventing" {
		t.Errorf("record owner: got %q, want eventing (the Trigger's caller, not the event's rexcaller)", owner)
	}

	if st, err := client.GetDeliberationStatus(bearer(malloryT), &pb.GetDeliberationStatusRequest{DeliberationId: id}); err != nil || st.GetStatus() != "not_found" {
		t.Errorf("mallory through the ingress: got %v %v, want not_found", st.GetStatus(), err)
	}
	var st *pb.GetDeliberationStatusResponse
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		st, err = client.GetDeliberationStatus(bearer(eventingT), &pb.GetDeliberationStatusRequest{DeliberationId: id})
		if err != nil {
			t.Fatalf("eventing through the ingress: %v", err)
		}
		if st.GetStatus() == "completed" || st.GetStatus() == "failed" {
			break
		}
	}
	if st.GetStatus() != "completed" {
		t.Errorf("eventing through the ingress: got %q (%s), want completed", st.GetStatus(), st.GetErrorMessage())
	}
	if d, k := iss.DiscoveryHits(), iss.JWKSHits(); d != 1 || k != 1 {
		t.Errorf("issuer asked %d times for discovery and %d for keys, want once each", d, k)
	}
	for _, tok := range []string{internalToken, eventingT} {
		if strings.Contains(s.execute.out.String(), tok) {
			t.Error("execute logged a token")
		}
	}
}
