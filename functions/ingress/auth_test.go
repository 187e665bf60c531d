package ingress

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

const (
	writerToken = "writer-token-0123456789abcdef"
	readerToken = "reader-token-0123456789abcdef"
	otherToken  = "second-writer-0123456789abcdef"
	adminToken  = "admin-token-0123456789abcdef"
)

var testTokens = "# callers of the test\n\nwriter " + writerToken + "\nreader " + readerToken + " read\nother " + otherToken + " write\nadmin " + adminToken + " admin\n"

func mustTokens(t *testing.T, text string) Tokens {
	t.Helper()
	tok, err := ParseTokens(text)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestParseTokens(t *testing.T) {
	tok := mustTokens(t, testTokens)
	if tok.Len() != 4 {
		t.Fatalf("got %d callers, want 4", tok.Len())
	}
	for _, c := range []struct {
		token, name string
		access      Access
	}{{writerToken, "writer", AccessWrite}, {readerToken, "reader", AccessRead}, {otherToken, "other", AccessWrite}, {adminToken, "admin", AccessAdmin}} {
		name, access, ok := tok.Lookup(c.token)
		if !ok || name != c.name || access != c.access {
			t.Errorf("Lookup(%s's token): got %q %s %v, want %q %s", c.name, name, access, ok, c.name, c.access)
		}
	}

	secret := "s3cr3t-never-shown-0000"
	bad := []struct {
		name, text, want string
	}{
		{"short token", "a short-token-1", "token is 13 characters, want at least 16"},
		{"duplicate name", "a " + secret + "\na another-token-0000000000", `line 2: caller "a" is named on line 1 already`},
		{"duplicate token", "a " + secret + "\n\nb " + secret, `line 3: caller "b" has the same token as line 1`},
		{"bad access", "a " + secret + " root", "the access (third field) must be read, write or admin"},
		// Fields out of order: the token in the name's place is never echoed.
		{"token first", secret + " a reed", "line 1: the access (third field) must be read, write or admin"},
		{"one field", "a", "got 1 fields"},
		{"four fields", "a " + secret + " read extra", "got 4 fields"},
		{"only comments", "# nobody\n\n", "names no caller"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseTokens(tc.text)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if !errors.Is(err, domain.ErrInvalid) {
				t.Errorf("got %v, want it to wrap domain.ErrInvalid", err)
			}
			for _, s := range []string{secret, "short-token-1", "another-token"} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q shows a token", err)
				}
			}
		})
	}
}

func TestTokensLookupRefuses(t *testing.T) {
	tok := mustTokens(t, testTokens)
	for _, presented := range []string{"", "nope", writerToken[:len(writerToken)-1], writerToken + "x", strings.ToUpper(writerToken), " " + writerToken} {
		if name, _, ok := tok.Lookup(presented); ok {
			t.Errorf("Lookup(%q) let %q in, want refused", presented, name)
		}
	}
	if _, _, ok := (Tokens{}).Lookup(writerToken); ok {
		t.Error("an empty table let a token in")
	}
}

// Lookup takes as long whichever entry matches, or none: an early exit would make a match on
// the first of 4000 entries thousands of times faster than one on the last.
func TestTokensLookupTakesTheSameTime(t *testing.T) {
	const n = 4000
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "caller-%d token-%016d\n", i, i)
	}
	tok := mustTokens(t, b.String())
	// Rounds interleave the three so that a busy machine slows them alike; medians drop outliers.
	tokens := []string{fmt.Sprintf("token-%016d", 0), fmt.Sprintf("token-%016d", n-1), "token-that-matches-no-one"}
	times := make([][]time.Duration, len(tokens))
	for range 31 {
		for i, tk := range tokens {
			start := time.Now()
			tok.Lookup(tk)
			times[i] = append(times[i], time.Since(start))
		}
	}
	median := func(ds []time.Duration) time.Duration {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	first, last, none := median(times[0]), median(times[1]), median(times[2])
	for _, c := range []struct {
		name string
		d    time.Duration
	}{{"first", first}, {"none", none}} {
		if ratio := float64(c.d) / float64(last); ratio < 0.33 || ratio > 3 {
			t.Errorf("a match on the %s entry took %v, on the last %v: ratio %.3f, want about 1", c.name, c.d, last, ratio)
		}
	}
}

// guarded serves a Server with cfg's auth and limits on a real loopback listener.
func guarded(t *testing.T, cfg Config, srv *Server) string {
	t.Helper()
	if srv.Health == nil {
		srv.Health = &Health{HTTP: http.DefaultClient} // no targets: SERVING
	}
	if srv.Logger == nil {
		srv.Logger = quiet
	}
	if srv.Caller == nil {
		srv.Caller = okCaller()
	}
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 1 << 20
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := NewGRPCServer(srv, cfg)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	return ln.Addr().String()
}

// okCaller answers every call with an empty success.
func okCaller() *fakeCaller {
	return &fakeCaller{CallFn: func(context.Context, string, string, proto.Message, rpcevents.CallOptions, proto.Message) error {
		return nil
	}}
}

func connect(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func withToken(token string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
}

// every RPC of the service, as one call each.
var rpcs = map[string]func(context.Context, pb.RayExecutorServiceClient) error{
	"ExecuteDeliberation": func(ctx context.Context, c pb.RayExecutorServiceClient) error {
		_, err := c.ExecuteDeliberation(ctx, &pb.ExecuteDeliberationRequest{})
		return err
	},
	"ExecuteBacklogReviewDeliberation": func(ctx context.Context, c pb.RayExecutorServiceClient) error {
		_, err := c.ExecuteBacklogReviewDeliberation(ctx, &pb.ExecuteBacklogReviewDeliberationRequest{})
		return err
	},
	"CancelDeliberation": func(ctx context.Context, c pb.RayExecutorServiceClient) error {
		_, err := c.CancelDeliberation(ctx, &pb.CancelDeliberationRequest{DeliberationId: "delib-1"})
		return err
	},
	"GetDeliberationStatus": func(ctx context.Context, c pb.RayExecutorServiceClient) error {
		_, err := c.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: "delib-1"})
		return err
	},
	"GetActiveJobs": func(ctx context.Context, c pb.RayExecutorServiceClient) error {
		_, err := c.GetActiveJobs(ctx, &pb.GetActiveJobsRequest{})
		return err
	},
	"GetStatus": func(ctx context.Context, c pb.RayExecutorServiceClient) error {
		_, err := c.GetStatus(ctx, &pb.GetStatusRequest{})
		return err
	},
	"WatchDeliberation": func(ctx context.Context, c pb.RayExecutorServiceClient) error {
		s, err := c.WatchDeliberation(ctx, &pb.WatchDeliberationRequest{DeliberationId: "delib-1"})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		if status.Code(err) == codes.FailedPrecondition {
			return nil // the handler ran: events are off in these tests
		}
		return err
	},
}

var writes = map[string]bool{"ExecuteDeliberation": true, "ExecuteBacklogReviewDeliberation": true, "CancelDeliberation": true}

func TestTokensGuardEveryRPC(t *testing.T) {
	var called []string
	caller := &fakeCaller{CallFn: func(_ context.Context, _ string, ceType string, _ proto.Message, _ rpcevents.CallOptions, _ proto.Message) error {
		called = append(called, ceType)
		return nil
	}}
	addr := guarded(t, Config{Auth: AuthConfig{Tokens: mustTokens(t, testTokens)}}, &Server{Caller: caller})
	client := pb.NewRayExecutorServiceClient(connect(t, addr, nil))
	bg := context.Background()

	for name, call := range rpcs {
		t.Run(name, func(t *testing.T) {
			cases := []struct {
				cred string
				ctx  context.Context
				code codes.Code
				msg  string
			}{
				{"no token", bg, codes.Unauthenticated, "a bearer token is required"},
				{"wrong token", withToken("wrong-token-0123456789abcdef"), codes.Unauthenticated, "not valid"},
				{"not bearer", metadata.AppendToOutgoingContext(bg, "authorization", "Basic "+writerToken), codes.Unauthenticated, `must be "Bearer <token>"`},
				{"empty bearer", metadata.AppendToOutgoingContext(bg, "authorization", "Bearer "), codes.Unauthenticated, `must be "Bearer <token>"`},
				{"two tokens", metadata.AppendToOutgoingContext(withToken(writerToken), "authorization", "Bearer "+readerToken), codes.Unauthenticated, "exactly one"},
				{"reader", withToken(readerToken), codes.OK, ""},
				{"writer", withToken(writerToken), codes.OK, ""},
				{"writer, lower-case scheme", metadata.AppendToOutgoingContext(bg, "authorization", "bearer "+writerToken), codes.OK, ""},
			}
			for _, tc := range cases {
				if tc.cred == "reader" && writes[name] {
					tc.code, tc.msg = codes.PermissionDenied, `caller "reader" has read access only`
				}
				called = nil
				err := call(tc.ctx, client)
				st := status.Convert(err)
				if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
					t.Errorf("%s: got %s %q, want %s containing %q", tc.cred, st.Code(), st.Message(), tc.code, tc.msg)
				}
				for _, tok := range []string{writerToken, readerToken, "wrong-token"} {
					if strings.Contains(st.Message(), tok) {
						t.Errorf("%s: the answer %q shows a token", tc.cred, st.Message())
					}
				}
				if tc.code != codes.OK && len(called) > 0 {
					t.Errorf("%s: refused, yet the function was called: %v", tc.cred, called)
				}
			}
		})
	}
}

func TestOpenHealthAndReflection(t *testing.T) {
	for _, open := range []bool{true, false} {
		t.Run(fmt.Sprintf("open=%v", open), func(t *testing.T) {
			cfg := Config{Reflection: true, Auth: AuthConfig{Tokens: mustTokens(t, testTokens), OpenHealth: open, OpenReflection: open}}
			conn := connect(t, guarded(t, cfg, &Server{}), nil)
			want := codes.Unauthenticated
			if open {
				want = codes.OK
			}
			health := healthpb.NewHealthClient(conn)
			for _, ctx := range []context.Context{context.Background(), withToken(writerToken)} {
				wantHere := want
				if ctx != context.Background() {
					wantHere = codes.OK // a caller with a token is let in either way
				}
				r, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
				if status.Code(err) != wantHere || (err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING) {
					t.Errorf("health Check: got %v %v, want %s", r.GetStatus(), err, wantHere)
				}
				w, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
				if err == nil {
					_, err = w.Recv()
				}
				if status.Code(err) != wantHere {
					t.Errorf("health Watch: got %v, want %s", err, wantHere)
				}
				if err := listServices(ctx, conn); status.Code(err) != wantHere {
					t.Errorf("reflection: got %v, want %s", err, wantHere)
				}
			}
		})
	}
}

// listServices asks reflection for the services, as grpcurl list does.
func listServices(ctx context.Context, conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return err
	}
	// A refused stream may end before the request goes out: Send then says io.EOF, and the
	// stream's status (the refusal) comes from Recv, as grpc-go's SendMsg documents.
	if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	resp, err := s.Recv()
	if err != nil {
		return err
	}
	if len(resp.GetListServicesResponse().GetService()) == 0 {
		return errors.New("reflection listed no services")
	}
	return nil
}

func TestAuthOffLetsEveryoneIn(t *testing.T) {
	conn := connect(t, guarded(t, Config{Reflection: true}, &Server{}), nil)
	client := pb.NewRayExecutorServiceClient(conn)
	for name, call := range rpcs {
		if err := call(context.Background(), client); err != nil {
			t.Errorf("%s without auth configured: got %v, want OK", name, err)
		}
	}
	if err := listServices(context.Background(), conn); err != nil {
		t.Errorf("reflection without auth configured: %v", err)
	}
}

// mtlsFixture is a server CA with certificates for a listed client, an unlisted one, one
// listed by its DNS SAN only, and a client of another CA.
type mtlsFixture struct {
	ca, other                                *testenv.CA
	serverCert, serverKey                    string
	aliceCert, aliceKey, bobCert, bobKey     string
	malloryCert, malloryKey, sanCert, sanKey string
	eveCert, eveKey                          string
}

func newMTLS(t *testing.T) *mtlsFixture {
	f := &mtlsFixture{ca: testenv.NewCA(t, "ingress-clients"), other: testenv.NewCA(t, "someone-else")}
	f.serverCert, f.serverKey = f.ca.Issue(t, "ingress", []string{"localhost"}, true)
	f.aliceCert, f.aliceKey = f.ca.Issue(t, "alice", nil, false)
	f.bobCert, f.bobKey = f.ca.Issue(t, "bob", nil, false)
	f.malloryCert, f.malloryKey = f.ca.Issue(t, "mallory", nil, false)
	f.sanCert, f.sanKey = f.ca.Issue(t, "", []string{"svc.example"}, false)
	f.eveCert, f.eveKey = f.other.Issue(t, "alice", nil, false) // the right name from the wrong CA
	return f
}

func (f *mtlsFixture) serve(t *testing.T, tokens Tokens, limits Limits, srv *Server) string {
	t.Helper()
	tc, err := LoadTLS(f.serverCert, f.serverKey, f.ca.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	return guarded(t, Config{Limits: limits, Auth: AuthConfig{
		Tokens: tokens, TLS: tc, OpenHealth: true,
		ClientNames: map[string]bool{"alice": true, "bob": true, "svc.example": true},
	}}, srv)
}

func TestMutualTLS(t *testing.T) {
	f := newMTLS(t)
	addr := f.serve(t, Tokens{}, Limits{}, &Server{})
	status1 := func(creds credentials.TransportCredentials, ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := pb.NewRayExecutorServiceClient(connect(t, addr, creds)).
			GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: "delib-1"})
		return err
	}
	tlsWith := func(certFile, keyFile string) credentials.TransportCredentials {
		return credentials.NewTLS(f.ca.ClientTLS(t, certFile, keyFile))
	}
	cases := []struct {
		name  string
		creds credentials.TransportCredentials
		code  codes.Code
		msg   string
	}{
		{"listed CommonName", tlsWith(f.aliceCert, f.aliceKey), codes.OK, ""},
		{"listed DNS SAN", tlsWith(f.sanCert, f.sanKey), codes.OK, ""},
		{"unlisted name", tlsWith(f.malloryCert, f.malloryKey), codes.PermissionDenied, `client certificate "mallory" is not among the names allowed in`},
		{"no client certificate", tlsWith("", ""), codes.Unavailable, ""},
		{"certificate of another CA", tlsWith(f.eveCert, f.eveKey), codes.Unavailable, ""},
		{"plaintext", insecure.NewCredentials(), codes.Unavailable, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(status1(tc.creds, context.Background()))
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Errorf("got %s %q, want %s containing %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
}

func TestMutualTLSAndTokensRequireBoth(t *testing.T) {
	f := newMTLS(t)
	addr := f.serve(t, mustTokens(t, testTokens), Limits{}, &Server{})
	alice := pb.NewRayExecutorServiceClient(connect(t, addr, credentials.NewTLS(f.ca.ClientTLS(t, f.aliceCert, f.aliceKey))))
	mallory := pb.NewRayExecutorServiceClient(connect(t, addr, credentials.NewTLS(f.ca.ClientTLS(t, f.malloryCert, f.malloryKey))))
	req := &pb.ExecuteDeliberationRequest{}
	if _, err := alice.ExecuteDeliberation(context.Background(), req); status.Code(err) != codes.Unauthenticated {
		t.Errorf("right certificate, no token: got %v, want Unauthenticated", err)
	}
	if _, err := mallory.ExecuteDeliberation(withToken(writerToken), req); status.Code(err) != codes.PermissionDenied {
		t.Errorf("unlisted certificate, right token: got %v, want PermissionDenied", err)
	}
	if _, err := alice.ExecuteDeliberation(withToken(readerToken), req); status.Code(err) != codes.PermissionDenied {
		t.Errorf("right certificate, read token: got %v, want PermissionDenied", err)
	}
	if _, err := alice.ExecuteDeliberation(withToken(writerToken), req); err != nil {
		t.Errorf("right certificate and token: got %v, want OK", err)
	}
}

func TestLoadTLSRefusesBadFiles(t *testing.T) {
	f := newMTLS(t)
	cases := []struct{ name, cert, key, ca, want string }{
		{"missing cert", "/nonexistent.pem", f.serverKey, "", "TLS_CERT_FILE/TLS_KEY_FILE"},
		{"key of another cert", f.serverCert, f.aliceKey, "", "TLS_CERT_FILE/TLS_KEY_FILE"},
		{"missing CA", f.serverCert, f.serverKey, "/nonexistent-ca.pem", "TLS_CLIENT_CA_FILE"},
		{"CA file without a certificate", f.serverCert, f.serverKey, f.serverKey, "no PEM certificate"},
	}
	for _, tc := range cases {
		if _, err := LoadTLS(tc.cert, tc.key, tc.ca); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error about %s", tc.name, err, tc.want)
		}
	}
	c, err := LoadTLS(f.serverCert, f.serverKey, "")
	if err != nil || (AuthConfig{TLS: c}).MutualTLS() {
		t.Errorf("server TLS only: got %v, mutual=%v; want TLS without client certificates", err, (AuthConfig{TLS: c}).MutualTLS())
	}
}
