package rpcevents_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

const (
	oidcAudience = "serving.knative.dev/service/ray-executor/execute"
	brokerSub    = "system:serviceaccount:ray-executor:execute-deliberation-oidc-eventing.knative.dev-trigger"
	readerSub    = "system:serviceaccount:ray-executor:get-status-oidc-eventing.knative.dev-trigger"
	strangerSub  = "system:serviceaccount:default:curious-pod"
)

// oidcServer is a real rpcevents server behind real HTTP, verifying iss's tokens.
type oidcServer struct {
	url      string
	clock    *testenv.Clock
	logs     *testenv.SyncBuffer
	mu       sync.Mutex
	calls    int
	callers  []domain.Caller
	bodyRead atomic.Int64 // requests whose body the server read
}

// bodySpy marks its request's body as read on the first Read.
type bodySpy struct {
	io.ReadCloser
	once sync.Once
	mark func()
}

func (b *bodySpy) Read(p []byte) (int, error) {
	b.once.Do(b.mark)
	return b.ReadCloser.Read(p)
}

// oidcEnv is the environment of a function verifying iss's tokens for oidcAudience.
func oidcEnv(iss *testenv.OIDCIssuer) map[string]string {
	return map[string]string{
		"INTERNAL_TOKEN":              testToken,
		"EVENTING_OIDC_ISSUER":        iss.URL,
		"EVENTING_OIDC_AUDIENCE":      oidcAudience,
		"EVENTING_OIDC_DISCOVERY_URL": iss.URL,
		"EVENTING_OIDC_CA_FILE":       iss.CAFile,
		"EVENTING_OIDC_TOKEN_FILE":    iss.TokenFile,
		"EVENTING_OIDC_CALLERS": "# Triggers of the ray-executor Broker\n" +
			brokerSub + " eventing write\n" + readerSub + " eventing-reader read\n",
	}
}

// startOIDCServer serves ExecuteDeliberation (recording the caller) and
// GetDeliberationStatus with the access env describes.
func startOIDCServer(t *testing.T, env map[string]string) *oidcServer {
	t.Helper()
	r := config.NewReader(func(k string) string { return env[k] })
	a := rpcevents.ReadAccess(r)
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	o := &oidcServer{clock: testenv.NewClock(time.Now()), logs: &testenv.SyncBuffer{}}
	a.OIDC.Now = o.clock.Now
	s := rpcevents.NewServer(serverSource, slog.New(slog.NewJSONHandler(o.logs, nil)), 0)
	record := func(r *rpcevents.Request) {
		o.mu.Lock()
		o.calls++
		o.callers = append(o.callers, r.Caller())
		o.mu.Unlock()
	}
	s.Handle(rpcevents.TypeExecuteDeliberation, rpcevents.Route(
		func() *pb.ExecuteDeliberationRequest { return &pb.ExecuteDeliberationRequest{} },
		func(ctx context.Context, r *rpcevents.Request, req *pb.ExecuteDeliberationRequest) (proto.Message, error) {
			record(r)
			return &pb.ExecuteDeliberationResponse{TaskId: req.GetTaskId(), DeliberationId: "delib-1", Status: "submitted"}, nil
		}))
	s.Handle(rpcevents.TypeGetDeliberationStatus, rpcevents.Route(
		func() *pb.GetDeliberationStatusRequest { return &pb.GetDeliberationStatusRequest{} },
		func(ctx context.Context, r *rpcevents.Request, req *pb.GetDeliberationStatusRequest) (proto.Message, error) {
			record(r)
			return &pb.GetDeliberationStatusResponse{DeliberationId: req.GetDeliberationId(), Status: "running"}, nil
		}))
	s.Handle(rpcevents.TypeReconcile, func(ctx context.Context, r *rpcevents.Request) (proto.Message, error) {
		record(r)
		return nil, nil
	})
	s.SetAccess(a)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = &bodySpy{ReadCloser: r.Body, mark: func() { o.bodyRead.Add(1) }}
		s.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	o.url = srv.URL
	return o
}

func (o *oidcServer) seen() (int, []domain.Caller) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.calls, append([]domain.Caller(nil), o.callers...)
}

// post sends a binary-mode event of ceType with Authorization: Bearer token (none when
// empty) and the caller extensions a forger would add.
func (o *oidcServer) post(t *testing.T, ceType, body, token string) (*http.Response, []byte) {
	t.Helper()
	req := binaryRequest(t, o.url, ceType, body, map[string]string{"ce-rexcaller": "alice", "ce-rexrole": "admin"})
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return do(t, req)
}

// A verified token of a mapped subject is that caller, whatever the event's caller
// extensions claim, in binary and structured mode; the internal credential still works
// beside it.
func TestOIDCTokenIsTheMappedCaller(t *testing.T) {
	iss := testenv.NewOIDCIssuer(t)
	o := startOIDCServer(t, oidcEnv(iss))
	tok := iss.Token(t, brokerSub, oidcAudience)

	resp, body := o.post(t, rpcevents.TypeExecuteDeliberation, validRequestJSON, tok)
	checkOK(t, resp, body, executeReplyType)

	req := structuredRequest(t, o.url, envelope(t, validRequestJSON, map[string]any{"rexcaller": "alice", "rexrole": "admin"}))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, body = do(t, req)
	checkOK(t, resp, body, executeReplyType)

	// The ingress's word, with the internal credential, is still believed.
	resp, body = o.post(t, rpcevents.TypeExecuteDeliberation, validRequestJSON, testToken)
	checkOK(t, resp, body, executeReplyType)

	calls, callers := o.seen()
	want := []domain.Caller{{Name: "eventing"}, {Name: "eventing"}, {Name: "alice", Admin: true}}
	if calls != 3 || len(callers) != 3 {
		t.Fatalf("handler calls: got %d (%v), want 3", calls, callers)
	}
	for i := range want {
		if callers[i] != want[i] {
			t.Errorf("request %d: handler saw caller %+v, want %+v", i, callers[i], want[i])
		}
	}
	if strings.Contains(o.logs.String(), tok) {
		t.Error("the server logged the token")
	}
}

// Every token that is not a valid one of a mapped subject for this audience is refused with
// 401 and a reason, before the body is read and before any handler; the token is in no log
// and no answer.
func TestOIDCRefusals(t *testing.T) {
	iss := testenv.NewOIDCIssuer(t)
	other := testenv.NewRSAKey(t)
	now := time.Now()
	// kid of the issuer's published key, for a token signed by another key.
	published := kidOf(t, iss.Token(t, brokerSub, oidcAudience))
	tests := []struct {
		name       string
		token      func() string
		wantReason string
	}{
		{"wrong audience", func() string { return iss.Token(t, brokerSub, "serving.knative.dev/service/ray-executor/status") },
			"the token is not for this function's audience"},
		{"wrong issuer", func() string {
			return iss.Sign(t, testenv.Claims{Issuer: "https://kubernetes.default.svc.other", Subject: brokerSub, Audience: []string{oidcAudience}})
		}, "the token is from another issuer"},
		{"expired", func() string {
			return iss.Sign(t, testenv.Claims{Subject: brokerSub, Audience: []string{oidcAudience}, IssuedAt: now.Add(-2 * time.Hour), Expiry: now.Add(-time.Minute)})
		}, "the token has expired"},
		{"bad signature (a published kid, another key)", func() string {
			return iss.SignWith(t, other, published, testenv.Claims{Subject: brokerSub, Audience: []string{oidcAudience}})
		}, "the token's signature does not verify"},
		{"unknown kid", func() string {
			return iss.SignWith(t, other, "kid-never-published", testenv.Claims{Subject: brokerSub, Audience: []string{oidcAudience}})
		}, "the token is not signed by a key of the issuer"},
		{"alg none", func() string {
			return iss.Unsigned(t, testenv.Claims{Subject: brokerSub, Audience: []string{oidcAudience}})
		}, "the bearer token is not a JWT signed with an algorithm the issuer uses"},
		{"not a JWT", func() string { return "not-a-jwt-and-not-the-internal-token" },
			"the bearer token is not a JWT signed with an algorithm the issuer uses"},
		{"unmapped subject", func() string { return iss.Token(t, strangerSub, oidcAudience) },
			"the token's subject is not a caller of this function (EVENTING_OIDC_CALLERS)"},
		{"oversize", func() string { return strings.Repeat("e", rpcevents.MaxBearerBytes+1) },
			"the bearer token is larger than 8192 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := startOIDCServer(t, oidcEnv(iss))
			tok := tt.token()
			for _, ceType := range []string{rpcevents.TypeExecuteDeliberation, rpcevents.TypeReconcile} {
				o.clock.Advance(11 * time.Second) // past the key refresh interval: an unknown kid is looked up each time
				resp, body := o.post(t, ceType, validRequestJSON, tok)
				eb := errorBody(t, resp, body, http.StatusUnauthorized, "unauthenticated")
				if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer error="invalid_token"` {
					t.Errorf("%s: WWW-Authenticate %q, want Bearer error=\"invalid_token\"", ceType, got)
				}
				if eb.Error.Message != tt.wantReason {
					t.Errorf("%s: reason %q, want %q", ceType, eb.Error.Message, tt.wantReason)
				}
				if strings.Contains(string(body), tok) {
					t.Errorf("%s: the answer quotes the token", ceType)
				}
			}
			if calls, _ := o.seen(); calls != 0 {
				t.Errorf("handler calls: got %d, want 0", calls)
			}
			if n := o.bodyRead.Load(); n != 0 {
				t.Errorf("bodies read: got %d, want 0", n)
			}
			logs := o.logs.String()
			if !strings.Contains(logs, tt.wantReason) {
				t.Errorf("log %s: want the refusal's reason %q in it", logs, tt.wantReason)
			}
			if strings.Contains(logs, tok) || strings.Contains(logs, testToken) {
				t.Errorf("log %s: got a token in it", logs)
			}
		})
	}
}

// kidOf is the kid in a compact JWT's header.
func kidOf(t *testing.T, tok string) string {
	t.Helper()
	h, _, _ := strings.Cut(tok, ".")
	var hdr struct {
		Kid string `json:"kid"`
	}
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil || json.Unmarshal(b, &hdr) != nil || hdr.Kid == "" {
		t.Fatalf("token header %q has no kid", h)
	}
	return hdr.Kid
}

// A caller mapped with the read role reads but is refused what starts or stops work (403,
// before the body), as at the ingress; without a credential an open type stays open, but a
// token that fails is refused even there.
func TestOIDCRolesAndOpenTypes(t *testing.T) {
	iss := testenv.NewOIDCIssuer(t)
	env := oidcEnv(iss)
	env["INTERNAL_AUTH_OPEN_TYPES"] = rpcevents.TypeReconcile
	o := startOIDCServer(t, env)
	reader := iss.Token(t, readerSub, oidcAudience)

	resp, body := o.post(t, rpcevents.TypeExecuteDeliberation, validRequestJSON, reader)
	errorBody(t, resp, body, http.StatusForbidden, "permission_denied")
	if n := o.bodyRead.Load(); n != 0 {
		t.Errorf("bodies read for a refused write: got %d, want 0", n)
	}
	req := structuredRequest(t, o.url, envelope(t, validRequestJSON, nil))
	req.Header.Set("Authorization", "Bearer "+reader)
	resp, body = do(t, req)
	errorBody(t, resp, body, http.StatusForbidden, "permission_denied")

	resp, body = o.post(t, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"delib-1"}`, reader)
	checkOK(t, resp, body, statusReplyType)

	resp, body = o.post(t, rpcevents.TypeReconcile, `{}`, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("open type without a credential: got %d %s, want 202", resp.StatusCode, body)
	}
	resp, body = o.post(t, rpcevents.TypeReconcile, `{}`, iss.Token(t, strangerSub, oidcAudience))
	errorBody(t, resp, body, http.StatusUnauthorized, "unauthenticated")

	calls, callers := o.seen()
	want := []domain.Caller{{Name: "eventing-reader"}, {}}
	if calls != 2 || len(callers) != 2 || callers[0] != want[0] || callers[1] != want[1] {
		t.Errorf("handler saw %d calls by %+v, want %+v", calls, callers, want)
	}
}

// The issuer's keys are fetched once, then every token naming a cached key is checked
// against the cache alone, good signature or bad; an unknown kid fetches them again at most
// once per refresh interval (503, retried by Knative, in between), so a rotated key is picked
// up and made-up kids cost the issuer nothing more.
func TestOIDCKeysAreCachedAndRotationIsPickedUp(t *testing.T) {
	iss := testenv.NewOIDCIssuer(t)
	o := startOIDCServer(t, oidcEnv(iss))
	other := testenv.NewRSAKey(t)
	tok := iss.Token(t, brokerSub, oidcAudience)
	for i := 0; i < 20; i++ {
		resp, body := o.post(t, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"delib-1"}`, tok)
		checkOK(t, resp, body, statusReplyType)
	}
	forged := iss.SignWith(t, other, kidOf(t, tok), testenv.Claims{Subject: brokerSub, Audience: []string{oidcAudience}})
	for i := 0; i < 20; i++ {
		resp, body := o.post(t, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"delib-1"}`, forged)
		errorBody(t, resp, body, http.StatusUnauthorized, "unauthenticated")
	}
	if d, k := iss.DiscoveryHits(), iss.JWKSHits(); d != 1 || k != 1 {
		t.Fatalf("after 20 good and 20 forged tokens of a known kid: %d discovery and %d key requests, want 1 and 1", d, k)
	}

	// The issuer rotates: a token with the new kid arrives within the refresh interval of
	// the last fetch and is told to retry; once the interval has passed it is verified
	// with one more fetch, and from then on from the cache.
	iss.Rotate(t)
	rotated := iss.Token(t, brokerSub, oidcAudience)
	resp, body := o.post(t, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"delib-1"}`, rotated)
	errorBody(t, resp, body, http.StatusServiceUnavailable, "unavailable")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 for an unknown kid within the refresh interval: no Retry-After")
	}
	o.clock.Advance(11 * time.Second)
	for i := 0; i < 5; i++ {
		resp, body = o.post(t, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"delib-1"}`, rotated)
		checkOK(t, resp, body, statusReplyType)
	}
	if k := iss.JWKSHits(); k != 2 {
		t.Errorf("key requests after the rotation: got %d, want 2", k)
	}

	// Made-up kids: the first after the interval fetches once (401: not the issuer's),
	// the rest wait for the interval (503) without asking the issuer.
	o.clock.Advance(11 * time.Second)
	for i := 0; i < 10; i++ {
		madeUp := iss.SignWith(t, other, "made-up-"+string(rune('a'+i)), testenv.Claims{Subject: brokerSub, Audience: []string{oidcAudience}})
		resp, body = o.post(t, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"delib-1"}`, madeUp)
		want, code := http.StatusServiceUnavailable, "unavailable"
		if i == 0 {
			want, code = http.StatusUnauthorized, "unauthenticated"
		}
		errorBody(t, resp, body, want, code)
	}
	if k := iss.JWKSHits(); k != 3 {
		t.Errorf("key requests after 10 made-up kids: got %d, want 3", k)
	}
	// The old key is still published: its tokens still verify, from the cache.
	resp, body = o.post(t, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"delib-1"}`, tok)
	checkOK(t, resp, body, statusReplyType)
	if k := iss.JWKSHits(); k != 3 {
		t.Errorf("key requests: got %d, want still 3", k)
	}
}

// The issuer is asked with the service-account token it wants; without it discovery fails,
// and tokens are answered 503 (the function cannot check them now; Knative retries), not
// admitted.
func TestOIDCDiscoveryNeedsTheServiceAccountToken(t *testing.T) {
	iss := testenv.NewOIDCIssuer(t)
	env := oidcEnv(iss)
	wrong := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(wrong, []byte("not-the-service-account-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	env["EVENTING_OIDC_TOKEN_FILE"] = wrong
	o := startOIDCServer(t, env)
	resp, body := o.post(t, rpcevents.TypeExecuteDeliberation, validRequestJSON, iss.Token(t, brokerSub, oidcAudience))
	eb := errorBody(t, resp, body, http.StatusServiceUnavailable, "unavailable")
	if strings.Contains(eb.Error.Message, "127.0.0.1") {
		t.Errorf("503 message %q names the issuer's address; details belong in the log", eb.Error.Message)
	}
	if iss.Refused() == 0 || iss.DiscoveryHits() != 0 {
		t.Errorf("issuer: %d refused, %d discovery answers; want the tokenless request refused", iss.Refused(), iss.DiscoveryHits())
	}
	if calls, _ := o.seen(); calls != 0 || o.bodyRead.Load() != 0 {
		t.Errorf("handler calls %d, bodies read %d: want 0 and 0", calls, o.bodyRead.Load())
	}
	if !strings.Contains(o.logs.String(), "discovery failed") {
		t.Errorf("log %s: want the discovery failure", o.logs.String())
	}
}

func TestReadAccessOIDC(t *testing.T) {
	iss := testenv.NewOIDCIssuer(t)
	base := oidcEnv(iss)
	with := func(kv ...string) map[string]string {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return env
	}
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"complete", base, ""},
		{"missing audience", with("EVENTING_OIDC_AUDIENCE", ""), "EVENTING_OIDC_AUDIENCE must be set with EVENTING_OIDC_ISSUER"},
		{"issuer not https", with("EVENTING_OIDC_ISSUER", "http://kubernetes.default.svc"), "EVENTING_OIDC_ISSUER"},
		{"discovery not https", with("EVENTING_OIDC_DISCOVERY_URL", "kubernetes.default.svc"), "EVENTING_OIDC_DISCOVERY_URL"},
		{"no callers", with("EVENTING_OIDC_CALLERS", "# nobody\n"), "EVENTING_OIDC_CALLERS: maps no subject"},
		{"bad role", with("EVENTING_OIDC_CALLERS", brokerSub+" eventing owner"), "line 1: the role (third field) must be read, write or admin"},
		{"one field", with("EVENTING_OIDC_CALLERS", brokerSub), "line 1: want `<subject> <caller-name> [read|write|admin]`"},
		{"subject twice", with("EVENTING_OIDC_CALLERS", brokerSub+" a\n\n"+brokerSub+" b"), "line 3: subject"},
		{"missing CA file", with("EVENTING_OIDC_CA_FILE", "/nonexistent/ca.crt"), "EVENTING_OIDC_CA_FILE"},
		{"CA file without a certificate", with("EVENTING_OIDC_CA_FILE", iss.TokenFile), "holds no PEM certificate"},
		{"missing token file", with("EVENTING_OIDC_TOKEN_FILE", "/nonexistent/token"), "EVENTING_OIDC_TOKEN_FILE"},
		{"off without an issuer, whatever else is set", with("EVENTING_OIDC_ISSUER", "", "EVENTING_OIDC_AUDIENCE", "", "EVENTING_OIDC_CALLERS", "x"), ""},
		{"oversize internal token", with("INTERNAL_TOKEN", strings.Repeat("t", rpcevents.MaxBearerBytes+1)), "want at most 8192"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := config.NewReader(func(k string) string { return tt.env[k] })
			a := rpcevents.ReadAccess(r)
			err := r.Err()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error: got %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), testToken) {
					t.Errorf("error %q quotes the internal token", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("error: got %v, want none", err)
			}
			if tt.env["EVENTING_OIDC_ISSUER"] == "" {
				if a.OIDC.Enabled() {
					t.Errorf("OIDC on without an issuer: %+v", a.OIDC)
				}
				return
			}
			want := map[string]rpcevents.OIDCCaller{
				brokerSub: {Caller: domain.Caller{Name: "eventing"}},
				readerSub: {Caller: domain.Caller{Name: "eventing-reader"}, ReadOnly: true},
			}
			if !a.OIDC.Enabled() || a.OIDC.Issuer != iss.URL || a.OIDC.Audience != oidcAudience ||
				a.OIDC.TokenFile != iss.TokenFile || a.OIDC.RootCAs == nil || len(a.OIDC.Callers) != len(want) {
				t.Fatalf("got %+v", a.OIDC)
			}
			for sub, c := range want {
				if a.OIDC.Callers[sub] != c {
					t.Errorf("caller of %s: got %+v, want %+v", sub, a.OIDC.Callers[sub], c)
				}
			}
		})
	}
	// The admin role maps to an admin caller; the default discovery URL is the API server.
	r := config.NewReader(func(k string) string {
		switch k {
		case "EVENTING_OIDC_ISSUER":
			return "https://kubernetes.default.svc.cluster.local"
		case "EVENTING_OIDC_AUDIENCE":
			return oidcAudience
		case "EVENTING_OIDC_CALLERS":
			return brokerSub + " ops admin"
		}
		return ""
	})
	a := rpcevents.ReadAccess(r)
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if a.OIDC.DiscoveryURL != rpcevents.DefaultOIDCDiscoveryURL || a.OIDC.Callers[brokerSub] != (rpcevents.OIDCCaller{Caller: domain.Caller{Name: "ops", Admin: true}}) {
		t.Errorf("got %+v", a.OIDC)
	}
}

// What a verified Eventing OIDC token costs a request beside the internal credential (the
// baseline, in the same run), keys cached: one GetDeliberationStatus event through the real
// server each: `go test -run '^$' -bench 'OIDCVsInternal' ./shared/rpcevents/`.
func BenchmarkOIDCVsInternalToken(b *testing.B) {
	iss := testenv.NewOIDCIssuer(b)
	env := oidcEnv(iss)
	r := config.NewReader(func(k string) string { return env[k] })
	a := rpcevents.ReadAccess(r)
	if err := r.Err(); err != nil {
		b.Fatal(err)
	}
	s, _ := newServer(0, nil)
	s.SetAccess(a)
	serve := func(b *testing.B, token string) {
		req := httptest.NewRequest(http.MethodPost, "/", nil)
		for k, v := range ceHeaders(rpcevents.TypeGetDeliberationStatus) {
			req.Header.Set(k, v)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+token)
		for b.Loop() {
			req.Body = io.NopCloser(strings.NewReader(`{"deliberation_id":"delib-1"}`))
			w := httptest.NewRecorder()
			s.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				b.Fatalf("status %d: %s", w.Code, w.Body)
			}
		}
	}
	tok := iss.Token(b, brokerSub, oidcAudience)
	b.Run("internal", func(b *testing.B) { serve(b, testToken) })
	b.Run("oidc", func(b *testing.B) { serve(b, tok) })
	if k := iss.JWKSHits(); k != 1 {
		b.Errorf("key requests: got %d, want 1 for every request of the run", k)
	}
}
