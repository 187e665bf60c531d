package rpcevents_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
)

const testToken = "s3cret-internal-token-0123456789"

// startGuarded serves newServer's server with access a.
func startGuarded(t *testing.T, a rpcevents.Access) (*httptest.Server, *seen) {
	t.Helper()
	s, rec := newServer(0, nil)
	s.SetAccess(a)
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return srv, rec
}

// checkUnauthenticated checks a 401 answer: the challenge, the JSON error, and that it
// neither echoes a token nor reached the handler.
func checkUnauthenticated(t *testing.T, resp *http.Response, body []byte, rec *seen, wantChallenge string) {
	t.Helper()
	errorBody(t, resp, body, http.StatusUnauthorized, "unauthenticated")
	if got := resp.Header.Get("WWW-Authenticate"); got != wantChallenge {
		t.Errorf("WWW-Authenticate: got %q, want %q", got, wantChallenge)
	}
	if strings.Contains(string(body), testToken) || strings.Contains(string(body), "wrong-token") {
		t.Errorf("401 body %s: got a token in it, want none", body)
	}
	if calls, _, _, _, _ := rec.snapshot(); calls != 0 {
		t.Errorf("handler calls: got %d, want 0", calls)
	}
}

func TestServerRequiresTheInternalCredential(t *testing.T) {
	const (
		missing = "Bearer"
		wrong   = `Bearer error="invalid_token"`
	)
	tests := []struct {
		name          string
		authorization string
		structured    bool
		wantChallenge string // empty: admitted
	}{
		{"binary, none", "", false, missing},
		{"binary, wrong token", "Bearer wrong-token-0123456789", false, wrong},
		{"binary, token as a prefix", "Bearer " + testToken[:20], false, wrong},
		{"binary, token with more after it", "Bearer " + testToken + "x", false, wrong},
		{"binary, basic scheme", "Basic " + testToken, false, missing},
		{"binary, scheme only", "Bearer ", false, missing},
		{"binary, token without scheme", testToken, false, missing},
		{"binary, right token", "Bearer " + testToken, false, ""},
		{"binary, scheme in lower case", "bearer " + testToken, false, ""},
		{"structured, none", "", true, missing},
		{"structured, wrong token", "Bearer wrong-token-0123456789", true, wrong},
		{"structured, right token", "Bearer " + testToken, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, rec := startGuarded(t, rpcevents.Access{Token: testToken})
			req := binaryRequest(t, srv.URL, rpcevents.TypeExecuteDeliberation, validRequestJSON, nil)
			if tt.structured {
				req = structuredRequest(t, srv.URL, envelope(t, validRequestJSON, nil))
			}
			if tt.authorization != "" {
				req.Header.Set("Authorization", tt.authorization)
			}
			resp, body := do(t, req)
			if tt.wantChallenge == "" {
				checkOK(t, resp, body, executeReplyType)
				return
			}
			checkUnauthenticated(t, resp, body, rec, tt.wantChallenge)
		})
	}
}

func TestServerWithoutTokenAdmitsEveryone(t *testing.T) {
	srv, _ := startGuarded(t, rpcevents.Access{})
	req := binaryRequest(t, srv.URL, rpcevents.TypeExecuteDeliberation, validRequestJSON, nil)
	req.Header.Set("Authorization", "Bearer anything-at-all-really")
	resp, body := do(t, req)
	checkOK(t, resp, body, executeReplyType)
}

// Open types are what Knative Eventing delivers, which cannot add a header: they pass
// without the credential, everything else still needs it.
func TestServerOpenTypes(t *testing.T) {
	open := rpcevents.Access{Token: testToken, OpenTypes: []string{rpcevents.TypeGetDeliberationStatus}}
	tests := []struct {
		name   string
		req    func(t *testing.T, url string) *http.Request
		wantOK string // reply type; empty: refused 401
	}{
		{"binary open type", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"d-1"}`, nil)
		}, statusReplyType},
		{"binary open type, percent-encoded type header", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"d-1"}`,
				map[string]string{"ce-type": strings.Replace(rpcevents.TypeGetDeliberationStatus, ".", "%2E", 1)})
		}, statusReplyType},
		{"binary open type with a foreign token (Eventing OIDC)", func(t *testing.T, url string) *http.Request {
			req := binaryRequest(t, url, rpcevents.TypeGetDeliberationStatus, `{"deliberation_id":"d-1"}`, nil)
			req.Header.Set("Authorization", "Bearer eyJhbGciOi.some.jwt")
			return req
		}, statusReplyType},
		{"structured open type", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, `{"deliberation_id":"d-1"}`,
				map[string]any{"type": rpcevents.TypeGetDeliberationStatus}))
		}, statusReplyType},
		{"binary closed type", func(t *testing.T, url string) *http.Request {
			return binaryRequest(t, url, rpcevents.TypeExecuteDeliberation, validRequestJSON, nil)
		}, ""},
		{"structured closed type", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, envelope(t, validRequestJSON, nil))
		}, ""},
		{"structured closed type, binary headers claiming an open one", func(t *testing.T, url string) *http.Request {
			req := structuredRequest(t, url, envelope(t, validRequestJSON, nil))
			req.Header.Set("ce-type", rpcevents.TypeGetDeliberationStatus)
			return req
		}, ""},
		{"structured, not a CloudEvent", func(t *testing.T, url string) *http.Request {
			return structuredRequest(t, url, `{"specversion":`)
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, rec := startGuarded(t, open)
			resp, body := do(t, tt.req(t, srv.URL))
			if tt.wantOK != "" {
				checkOK(t, resp, body, tt.wantOK)
				return
			}
			checkUnauthenticated(t, resp, body, rec, "Bearer")
		})
	}
}

// readSpy is a request body that records whether anyone read it.
type readSpy struct {
	io.Reader
	read atomic.Bool
}

func (r *readSpy) Read(p []byte) (int, error) {
	r.read.Store(true)
	return r.Reader.Read(p)
}

func (r *readSpy) Close() error { return nil }

// A caller without the credential costs a header comparison: its body is never read.
func TestServerRefusesBeforeReadingTheBody(t *testing.T) {
	tests := []struct {
		name      string
		access    rpcevents.Access
		ceType    string // binary mode when set, structured otherwise
		auth      string
		wantCode  int
		wantRead  bool
		wantCalls int
	}{
		{"binary, no token", rpcevents.Access{Token: testToken}, rpcevents.TypeExecuteDeliberation, "", 401, false, 0},
		{"binary, wrong token", rpcevents.Access{Token: testToken}, rpcevents.TypeExecuteDeliberation, "Bearer nope-nope-nope-nope", 401, false, 0},
		{"structured, no token, no open types", rpcevents.Access{Token: testToken}, "", "", 401, false, 0},
		{"binary closed type among open ones", rpcevents.Access{Token: testToken, OpenTypes: []string{rpcevents.TypeGetStatus}},
			rpcevents.TypeExecuteDeliberation, "", 401, false, 0},
		{"binary, right token", rpcevents.Access{Token: testToken}, rpcevents.TypeExecuteDeliberation, "Bearer " + testToken, 200, true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, rec := newServer(0, nil)
			s.SetAccess(tt.access)
			spy := &readSpy{Reader: strings.NewReader(validRequestJSON)}
			req := httptest.NewRequest(http.MethodPost, "/", nil)
			req.Body = spy
			if tt.ceType != "" {
				for k, v := range ceHeaders(tt.ceType) {
					req.Header.Set(k, v)
				}
				req.Header.Set("Content-Type", "application/json")
			} else {
				req.Header.Set("Content-Type", "application/cloudevents+json")
			}
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			w := httptest.NewRecorder()
			s.ServeHTTP(w, req)
			if w.Code != tt.wantCode {
				t.Errorf("status: got %d (%s), want %d", w.Code, w.Body, tt.wantCode)
			}
			if got := spy.read.Load(); got != tt.wantRead {
				t.Errorf("body read: got %v, want %v", got, tt.wantRead)
			}
			if calls, _, _, _, _ := rec.snapshot(); calls != tt.wantCalls {
				t.Errorf("handler calls: got %d, want %d", calls, tt.wantCalls)
			}
		})
	}
}

func ceHeaders(typ string) map[string]string {
	return map[string]string{"ce-specversion": "1.0", "ce-id": "x1", "ce-source": "test", "ce-type": typ}
}

// blockingServer handles GetStatus by waiting for release; entered receives one value per
// request that reached the handler.
func blockingServer(t *testing.T, a rpcevents.Access) (url string, entered chan struct{}, release func()) {
	t.Helper()
	s := rpcevents.NewServer(serverSource, discard, 0)
	entered = make(chan struct{}, 64)
	gate := make(chan struct{})
	s.Handle(rpcevents.TypeGetStatus, func(ctx context.Context, _ *rpcevents.Request) (proto.Message, error) {
		entered <- struct{}{}
		select {
		case <-gate:
		case <-ctx.Done():
		}
		return &pb.GetStatusResponse{Status: "healthy"}, nil
	})
	s.SetAccess(a)
	srv := httptest.NewServer(s)
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(func() { release(); srv.Close() })
	return srv.URL, entered, release
}

// getStatus sends GetStatus; a server that queues instead of refusing fails it by timing out.
func getStatus(t *testing.T, url, token string) (*http.Response, []byte) {
	t.Helper()
	req := binaryRequest(t, url, rpcevents.TypeGetStatus, `{}`, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Errorf("GetStatus: %v", err)
		return &http.Response{}, nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Errorf("read body: %v", err)
	}
	return resp, body
}

// Over MAX_INFLIGHT a request is refused at once with 429 and Retry-After, never queued;
// a finished request frees its slot.
func TestServerMaxInflight(t *testing.T) {
	const limit = 3
	url, entered, release := blockingServer(t, rpcevents.Access{Token: testToken, MaxInflight: limit})
	var wg sync.WaitGroup
	codes := make(chan int, limit)
	for i := 0; i < limit; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, _ := getStatus(t, url, testToken)
			codes <- resp.StatusCode
		}()
	}
	for i := 0; i < limit; i++ {
		select {
		case <-entered:
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d requests reached the handler", i, limit)
		}
	}

	start := time.Now()
	resp, body := getStatus(t, url, testToken)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("429 took %v, want an immediate answer", took)
	}
	eb := errorBody(t, resp, body, http.StatusTooManyRequests, "resource_exhausted")
	if got := resp.Header.Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After: got %q, want %q", got, "1")
	}
	if !strings.Contains(eb.Error.Message, fmt.Sprint(limit)) {
		t.Errorf("error.message: got %q, want it to name the limit %d", eb.Error.Message, limit)
	}
	// A caller without the credential is told so; it takes no slot and learns nothing of the load.
	resp, body = getStatus(t, url, "")
	errorBody(t, resp, body, http.StatusUnauthorized, "unauthenticated")

	release()
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusOK {
			t.Errorf("a request within the limit: got %d, want 200", c)
		}
	}
	for i := 0; i < limit+2; i++ { // every slot was given back
		if resp, body := getStatus(t, url, testToken); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d after the others finished: got %d %s, want 200", i, resp.StatusCode, body)
		}
	}
}

func TestServerDefaultMaxInflight(t *testing.T) {
	url, entered, release := blockingServer(t, rpcevents.Access{})
	done := make(chan int, rpcevents.DefaultMaxInflight)
	for i := 0; i < rpcevents.DefaultMaxInflight; i++ {
		go func() {
			resp, _ := getStatus(t, url, "")
			done <- resp.StatusCode
		}()
	}
	for i := 0; i < rpcevents.DefaultMaxInflight; i++ {
		select {
		case <-entered:
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d of %d requests reached the handler", i, rpcevents.DefaultMaxInflight)
		}
	}
	resp, body := getStatus(t, url, "")
	errorBody(t, resp, body, http.StatusTooManyRequests, "resource_exhausted")
	release()
	for i := 0; i < rpcevents.DefaultMaxInflight; i++ {
		if c := <-done; c != http.StatusOK {
			t.Errorf("a request within the default limit: got %d, want 200", c)
		}
	}
}

// A handler's ErrResourceExhausted is a 429 with Retry-After too.
func TestServerHandlerResourceExhaustedRetryAfter(t *testing.T) {
	srv, _ := startServer(t, 0, fmt.Errorf("caller over its rate: %w", domain.ErrResourceExhausted))
	resp, body := do(t, binaryRequest(t, srv.URL, rpcevents.TypeExecuteDeliberation, validRequestJSON, nil))
	errorBody(t, resp, body, http.StatusTooManyRequests, "resource_exhausted")
	if got := resp.Header.Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After: got %q, want %q", got, "1")
	}
}

func TestClientSendsToken(t *testing.T) {
	var got []string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Authorization"))
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(srv.Close)
	for _, tok := range []string{testToken, ""} {
		c := &rpcevents.Client{HTTP: srv.Client(), Source: "src", Token: tok}
		if err := c.Call(context.Background(), srv.URL, rpcevents.TypeReconcile, &pb.GetStatusRequest{}, rpcevents.CallOptions{}, &pb.GetStatusResponse{}); err != nil {
			t.Fatalf("Call: %v", err)
		}
	}
	if want := []string{"Bearer " + testToken, ""}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("Authorization sent: got %q, want %q", got, want)
	}
}

// The client against a guarded server: the right token works, none or a wrong one is
// ErrUnauthenticated with the function's own message.
func TestClientAgainstGuardedServer(t *testing.T) {
	srv, _ := startGuarded(t, rpcevents.Access{Token: testToken})
	tests := []struct {
		token string
		want  error
	}{
		{testToken, nil},
		{"", domain.ErrUnauthenticated},
		{"wrong-token-0123456789", domain.ErrUnauthenticated},
	}
	for _, tt := range tests {
		c := &rpcevents.Client{HTTP: srv.Client(), Source: "ray-executor/ingress", Token: tt.token}
		var resp pb.ExecuteDeliberationResponse
		err := c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, sampleRequest(), rpcevents.CallOptions{}, &resp)
		if tt.want == nil {
			if err != nil || resp.GetDeliberationId() != "delib-1" {
				t.Errorf("token %q: got %v %v, want the reply", tt.token, &resp, err)
			}
			continue
		}
		checkSentinel(t, err, tt.want)
		var se *rpcevents.StatusError
		if !errors.As(err, &se) || se.HTTPStatus != http.StatusUnauthorized || se.Code != "unauthenticated" {
			t.Errorf("token %q: got %v, want a 401 unauthenticated StatusError", tt.token, err)
		}
	}
}

// A reply over the client's 64 MiB limit is an error in both content modes, whether or not
// its length is announced, rather than read without bound.
func TestClientRefusesOversizedReply(t *testing.T) {
	const over = 64<<20 + 1
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = ' '
	}
	stream := func(w http.ResponseWriter, prefix string) {
		io.WriteString(w, prefix)
		for n := len(prefix); n < over; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}
	tests := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"binary, chunked", func(w http.ResponseWriter, r *http.Request) {
			for k, v := range ceHeaders(executeReplyType) {
				w.Header().Set(k, v)
			}
			w.Header().Set("Content-Type", "application/json")
			stream(w, `{"deliberation_id":"x"}`)
		}},
		{"binary, announced", func(w http.ResponseWriter, r *http.Request) {
			for k, v := range ceHeaders(executeReplyType) {
				w.Header().Set(k, v)
			}
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", fmt.Sprint(over+len(chunk)))
			stream(w, "")
		}},
		{"structured, chunked", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/cloudevents+json")
			stream(w, `{"specversion":"1.0","id":"1","source":"s","type":"`+executeReplyType+`","data":{"deliberation_id":"x"}`)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			c := &rpcevents.Client{HTTP: srv.Client(), Source: "src"}
			err := c.Call(context.Background(), srv.URL, rpcevents.TypeExecuteDeliberation, sampleRequest(), rpcevents.CallOptions{}, &pb.ExecuteDeliberationResponse{})
			if err == nil || !strings.Contains(err.Error(), "limit") {
				t.Errorf("Call: got %v, want an error naming the reply limit", err)
			}
		})
	}
}

func TestReadAccess(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	if err := os.WriteFile(file, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		env     map[string]string
		want    rpcevents.Access
		wantErr string // substring; empty: no error
	}{
		{"defaults", nil, rpcevents.Access{MaxInflight: rpcevents.DefaultMaxInflight}, ""},
		{"token from env", map[string]string{"INTERNAL_TOKEN": testToken}, rpcevents.Access{Token: testToken, MaxInflight: 256}, ""},
		{"token from file, trimmed", map[string]string{"INTERNAL_TOKEN_FILE": file}, rpcevents.Access{Token: testToken, MaxInflight: 256}, ""},
		{"open types and limit", map[string]string{"INTERNAL_TOKEN": testToken, "MAX_INFLIGHT": "64",
			"INTERNAL_AUTH_OPEN_TYPES": " dev.knative.sources.ping, ,fleet.ray_executor.v1.Reconcile "},
			rpcevents.Access{Token: testToken, MaxInflight: 64, OpenTypes: []string{"dev.knative.sources.ping", "fleet.ray_executor.v1.Reconcile"}}, ""},
		{"required and present", map[string]string{"INTERNAL_TOKEN": testToken, "INTERNAL_AUTH_REQUIRED": "true"}, rpcevents.Access{Token: testToken, MaxInflight: 256}, ""},
		{"required and missing", map[string]string{"INTERNAL_AUTH_REQUIRED": "true"}, rpcevents.Access{}, "INTERNAL_AUTH_REQUIRED"},
		{"short token", map[string]string{"INTERNAL_TOKEN": "short-secret"}, rpcevents.Access{}, "INTERNAL_TOKEN is 12 characters, want at least 16"},
		{"token with a newline", map[string]string{"INTERNAL_TOKEN": testToken + "\n"}, rpcevents.Access{}, "whitespace"},
		{"missing file", map[string]string{"INTERNAL_TOKEN_FILE": filepath.Join(dir, "nope")}, rpcevents.Access{}, "INTERNAL_TOKEN_FILE"},
		{"zero in flight", map[string]string{"MAX_INFLIGHT": "0"}, rpcevents.Access{}, "MAX_INFLIGHT must be positive"},
		{"in flight not a number", map[string]string{"MAX_INFLIGHT": "lots"}, rpcevents.Access{}, "MAX_INFLIGHT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := config.NewReader(func(k string) string { return tt.env[k] })
			got := rpcevents.ReadAccess(r)
			err := r.Err()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error: got %v, want one mentioning %q", err, tt.wantErr)
				}
				if tok := tt.env["INTERNAL_TOKEN"]; tok != "" && strings.Contains(err.Error(), strings.TrimSpace(tok)) {
					t.Errorf("error %q: got the token in it, want it kept out", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("error: got %v, want nil", err)
			}
			if got.Token != tt.want.Token || got.MaxInflight != tt.want.MaxInflight ||
				strings.Join(got.OpenTypes, ",") != strings.Join(tt.want.OpenTypes, ",") {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// A client that sends its headers and then trickles its body takes no in-flight slot: with
// MAX_INFLIGHT 1 and such a client holding a connection, a whole request is still served.
func TestSlowBodyTakesNoSlot(t *testing.T) {
	url, entered, release := blockingServer(t, rpcevents.Access{Token: testToken, MaxInflight: 1})
	release() // handlers answer at once
	addr := strings.TrimPrefix(url, "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	head := "POST / HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n" +
		"Authorization: Bearer " + testToken + "\r\nCe-Specversion: 1.0\r\nCe-Type: " + rpcevents.TypeGetStatus +
		"\r\nCe-Source: slow\r\nCe-Id: slow-1\r\n\r\n{"
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the server has the headers and waits for the body
	for i := range 3 {
		resp, body := getStatus(t, url, testToken)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d beside a slow body: got %d %s, want 200 (the slow one holds no slot)", i, resp.StatusCode, body)
		}
		<-entered
	}
}
