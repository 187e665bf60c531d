package ingress

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
)

// MetadataAuthorization carries "Bearer <token>".
const MetadataAuthorization = "authorization"

// minTokenLength refuses tokens short enough to guess; 16 random characters are ~95 bits.
const minTokenLength = 16

// anonymous is the caller every unauthenticated call counts as, for the limits.
const anonymous = "anonymous"

// Access is what a caller may do.
type Access int

const (
	// AccessWrite may call every RPC.
	AccessWrite Access = iota
	// AccessRead may call everything but the RPCs that start or stop deliberations.
	AccessRead
	// AccessAdmin may call every RPC and sees every caller's deliberations; the others see
	// their own only (domain.Caller.Sees).
	AccessAdmin
)

func (a Access) String() string {
	switch a {
	case AccessRead:
		return "read"
	case AccessAdmin:
		return "admin"
	}
	return "write"
}

// writeMethods start or stop work on the cluster: a read caller is refused them.
var writeMethods = map[string]bool{
	pb.RayExecutorService_ExecuteDeliberation_FullMethodName:              true,
	pb.RayExecutorService_ExecuteBacklogReviewDeliberation_FullMethodName: true,
	pb.RayExecutorService_CancelDeliberation_FullMethodName:               true,
}

// submitMethods are the RPCs the per-caller submission rate applies to.
var submitMethods = map[string]bool{
	pb.RayExecutorService_ExecuteDeliberation_FullMethodName:              true,
	pb.RayExecutorService_ExecuteBacklogReviewDeliberation_FullMethodName: true,
}

// Method prefixes of the services that can be left open.
const (
	healthPrefix          = "/grpc.health.v1.Health/"
	reflectionPrefix      = "/grpc.reflection.v1.ServerReflection/"
	reflectionAlphaPrefix = "/grpc.reflection.v1alpha.ServerReflection/"
)

func isHealth(method string) bool { return strings.HasPrefix(method, healthPrefix) }

func isReflection(method string) bool {
	return strings.HasPrefix(method, reflectionPrefix) || strings.HasPrefix(method, reflectionAlphaPrefix)
}

// tokenEntry is one caller of AUTH_TOKENS. Only the token's SHA-256 is kept: comparing
// fixed-length digests takes the same time whatever the presented token's length.
type tokenEntry struct {
	name   string
	access Access
	sum    [sha256.Size]byte
}

// Tokens are the callers allowed in by bearer token.
type Tokens struct {
	entries []tokenEntry
}

// Len is the number of callers.
func (t Tokens) Len() int { return len(t.entries) }

// ParseTokens reads AUTH_TOKENS: one caller a line, `<name> <token> [read|write]` (write
// when left out); blank lines and lines starting with '#' are ignored. Errors name the line
// and the caller, never a token, and wrap domain.ErrInvalid.
func ParseTokens(text string) (Tokens, error) {
	var (
		t      Tokens
		errs   []error
		names  = map[string]int{}
		tokens = map[[sha256.Size]byte]int{}
	)
	for i, line := range strings.Split(text, "\n") {
		n := i + 1
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || len(f) > 3 {
			errs = append(errs, fmt.Errorf("line %d: want `<caller-name> <token> [read|write|admin]`, got %d fields", n, len(f)))
			continue
		}
		e := tokenEntry{name: f[0], access: AccessWrite, sum: sha256.Sum256([]byte(f[1]))}
		if len(f) == 3 {
			switch f[2] {
			case "read":
				e.access = AccessRead
			case "admin":
				e.access = AccessAdmin
			case "write":
			default:
				// Neither field is echoed: a line with its fields out of order would print
				// a token.
				errs = append(errs, fmt.Errorf("line %d: the access (third field) must be read, write or admin", n))
				continue
			}
		}
		if len(f[1]) < minTokenLength {
			errs = append(errs, fmt.Errorf("line %d: caller %q: token is %d characters, want at least %d", n, e.name, len(f[1]), minTokenLength))
			continue
		}
		if prev, dup := names[e.name]; dup {
			errs = append(errs, fmt.Errorf("line %d: caller %q is named on line %d already", n, e.name, prev))
			continue
		}
		if prev, dup := tokens[e.sum]; dup {
			errs = append(errs, fmt.Errorf("line %d: caller %q has the same token as line %d", n, e.name, prev))
			continue
		}
		names[e.name], tokens[e.sum] = n, n
		t.entries = append(t.entries, e)
	}
	if len(errs) == 0 && len(t.entries) == 0 {
		errs = append(errs, errors.New("names no caller (an empty list would let nobody in; unset it to turn tokens off)"))
	}
	if len(errs) > 0 {
		return Tokens{}, fmt.Errorf("AUTH_TOKENS: %w: %w", errors.Join(errs...), domain.ErrInvalid)
	}
	return t, nil
}

// Lookup finds the caller whose token is presented. It compares the presented token's digest
// with every entry, without stopping at a match, so the time taken says nothing about which
// entry (if any) matched or how much of a token was right.
func (t Tokens) Lookup(token string) (name string, access Access, ok bool) {
	sum := sha256.Sum256([]byte(token))
	found := -1
	for i := range t.entries {
		eq := subtle.ConstantTimeCompare(sum[:], t.entries[i].sum[:])
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	if found < 0 {
		return "", 0, false
	}
	return t.entries[found].name, t.entries[found].access, true
}

// AuthConfig is who may call the ingress.
type AuthConfig struct {
	// Tokens (AUTH_TOKENS or AUTH_TOKENS_FILE); none: tokens are not required.
	Tokens Tokens
	// TLS (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CLIENT_CA_FILE) serves TLS when set; with a
	// client CA, every connection must present a certificate it signed.
	TLS *tls.Config
	// ClientNames (TLS_CLIENT_NAMES): when set, only client certificates whose CommonName or a
	// DNS SAN is listed are let in.
	ClientNames map[string]bool
	// OpenHealth (AUTH_OPEN_HEALTH) leaves grpc.health.v1 open.
	OpenHealth bool
	// OpenReflection (AUTH_OPEN_REFLECTION) leaves server reflection open.
	OpenReflection bool
}

// MutualTLS reports whether client certificates are required.
func (a AuthConfig) MutualTLS() bool {
	return a.TLS != nil && a.TLS.ClientAuth == tls.RequireAndVerifyClientCert
}

// Enabled reports whether callers must present any credential.
func (a AuthConfig) Enabled() bool { return a.Tokens.Len() > 0 || a.MutualTLS() }

// LoadTLS builds the server's TLS configuration from PEM files. Client certificates are
// required and verified against clientCAFile when it is set. Certificates are read once:
// rotating them means restarting the ingress (a rolling restart under Kubernetes).
func LoadTLS(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS_CERT_FILE/TLS_KEY_FILE: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(clientCAFile)
	if err != nil {
		return nil, fmt.Errorf("TLS_CLIENT_CA_FILE: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("TLS_CLIENT_CA_FILE %s: no PEM certificate in it", clientCAFile)
	}
	cfg.ClientCAs = pool
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	return cfg, nil
}

// identity is who a call is from, once let in.
type identity struct {
	name   string
	access Access
}

// authenticate establishes who the call is from. With both tokens and mutual TLS configured
// both must pass, and the token's caller is the identity (it is the more specific: several
// callers may share a certificate). Refusals are UNAUTHENTICATED or PERMISSION_DENIED and
// never echo what was presented.
func (a AuthConfig) authenticate(ctx context.Context) (identity, error) {
	id := identity{name: anonymous, access: AccessWrite}
	if a.MutualTLS() {
		name, err := a.certIdentity(ctx)
		if err != nil {
			return identity{}, err
		}
		id.name = name
	}
	if a.Tokens.Len() > 0 {
		token, err := bearer(ctx)
		if err != nil {
			return identity{}, err
		}
		name, access, ok := a.Tokens.Lookup(token)
		if !ok {
			return identity{}, status.Error(codes.Unauthenticated, "the bearer token is not valid for this service")
		}
		id.name, id.access = name, access
	}
	return id, nil
}

// bearer is the token of the call's single "authorization: Bearer <token>" entry.
func bearer(ctx context.Context) (string, error) {
	v := metadata.ValueFromIncomingContext(ctx, MetadataAuthorization)
	switch {
	case len(v) == 0:
		return "", status.Error(codes.Unauthenticated, "a bearer token is required: send metadata \"authorization: Bearer <token>\"")
	case len(v) > 1:
		return "", status.Error(codes.Unauthenticated, "send exactly one authorization metadata entry")
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(v[0]), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", status.Error(codes.Unauthenticated, "the authorization metadata must be \"Bearer <token>\"")
	}
	return token, nil
}

// certIdentity is the verified client certificate's CommonName (or first DNS SAN), checked
// against ClientNames when that is set.
func (a AuthConfig) certIdentity(ctx context.Context) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", status.Error(codes.Unauthenticated, "a client certificate is required")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.PeerCertificates) == 0 {
		return "", status.Error(codes.Unauthenticated, "a verified client certificate is required")
	}
	cert := info.State.PeerCertificates[0]
	names := append([]string{cert.Subject.CommonName}, cert.DNSNames...)
	if len(a.ClientNames) > 0 {
		for _, n := range names {
			if n != "" && a.ClientNames[n] {
				return certName(cert), nil
			}
		}
		return "", status.Errorf(codes.PermissionDenied, "client certificate %q is not among the names allowed in", certName(cert))
	}
	return certName(cert), nil
}

func certName(cert *x509.Certificate) string {
	if cert.Subject.CommonName != "" || len(cert.DNSNames) == 0 {
		return cert.Subject.CommonName
	}
	return cert.DNSNames[0]
}
