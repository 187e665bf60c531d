package testenv

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// OIDCIssuer stands in for the Kubernetes service-account issuer, the one part of Knative
// Eventing's OIDC authentication that cannot run here: it serves
// /.well-known/openid-configuration and a JWKS over TLS (its CA in CAFile), answers only
// requests bearing the token in TokenFile (as the API server wants a service account's),
// and signs tokens as the issuer signs a Trigger's.
type OIDCIssuer struct {
	// URL is the issuer (https://127.0.0.1:port), both its `iss` and its discovery address.
	URL string
	// CAFile verifies the issuer's certificate; TokenFile holds the bearer token it asks for.
	CAFile, TokenFile string

	discoveryToken string
	mu             sync.Mutex
	keys           []issuerKey // published; the last one signs
	discoveryHits  atomic.Int64
	jwksHits       atomic.Int64
	refused        atomic.Int64
}

type issuerKey struct {
	kid  string
	priv *rsa.PrivateKey
}

// NewOIDCIssuer starts an issuer with one RSA signing key, for the test's lifetime.
func NewOIDCIssuer(t testing.TB) *OIDCIssuer {
	t.Helper()
	ca := NewCA(t, "oidc-issuer")
	certFile, keyFile := ca.Issue(t, "127.0.0.1", []string{"localhost"}, true)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	iss := &OIDCIssuer{CAFile: ca.CertFile, discoveryToken: "discovery-" + randomID(t)}
	iss.TokenFile = filepath.Join(t.TempDir(), "sa-token")
	if err := os.WriteFile(iss.TokenFile, []byte(iss.discoveryToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	iss.Rotate(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(iss.serve))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	iss.URL = srv.URL
	return iss
}

func randomID(t testing.TB) string {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func (i *OIDCIssuer) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+i.discoveryToken {
		i.refused.Add(1)
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/.well-known/openid-configuration":
		i.discoveryHits.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                i.URL,
			"jwks_uri":                              i.URL + "/openid/v1/jwks",
			"response_types_supported":              []string{"id_token"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256"},
		})
	case "/openid/v1/jwks":
		i.jwksHits.Add(1)
		i.mu.Lock()
		var set jose.JSONWebKeySet
		for _, k := range i.keys {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: &k.priv.PublicKey, KeyID: k.kid, Algorithm: string(jose.RS256), Use: "sig"})
		}
		i.mu.Unlock()
		_ = json.NewEncoder(w).Encode(set)
	default:
		http.NotFound(w, r)
	}
}

// Rotate adds a new signing key (a new kid) to the published set; tokens are signed with it
// from now on. It returns the new kid.
func (i *OIDCIssuer) Rotate(t testing.TB) string {
	t.Helper()
	priv := NewRSAKey(t)
	k := issuerKey{kid: "kid-" + randomID(t), priv: priv}
	i.mu.Lock()
	i.keys = append(i.keys, k)
	i.mu.Unlock()
	return k.kid
}

// NewRSAKey is a fresh 2048-bit RSA key.
func NewRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// DiscoveryHits and JWKSHits count the answered discovery and key requests; Refused counts
// requests without the discovery token.
func (i *OIDCIssuer) DiscoveryHits() int64 { return i.discoveryHits.Load() }
func (i *OIDCIssuer) JWKSHits() int64      { return i.jwksHits.Load() }
func (i *OIDCIssuer) Refused() int64       { return i.refused.Load() }

// Claims are a token's; zero fields take the issuer's defaults (Issuer: the issuer, Expiry:
// an hour after IssuedAt, IssuedAt: now).
type Claims struct {
	Issuer, Subject string
	Audience        []string
	IssuedAt        time.Time
	Expiry          time.Time
}

// Token is a token for subject and audience, signed with the current key, as Kubernetes
// issues it for a Trigger's OIDC service account.
func (i *OIDCIssuer) Token(t testing.TB, subject, audience string) string {
	return i.Sign(t, Claims{Subject: subject, Audience: []string{audience}})
}

// Sign signs c with the current key.
func (i *OIDCIssuer) Sign(t testing.TB, c Claims) string {
	t.Helper()
	i.mu.Lock()
	k := i.keys[len(i.keys)-1]
	i.mu.Unlock()
	return i.SignWith(t, k.priv, k.kid, c)
}

// SignWith signs c with priv, naming kid in the header (a key the issuer never published,
// or a published kid with another key: a forged signature).
func (i *OIDCIssuer) SignWith(t testing.TB, priv *rsa.PrivateKey, kid string, c Claims) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: priv, KeyID: kid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := signer.Sign(i.payload(t, c))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// Unsigned is c as a token with "alg": "none" and no signature.
func (i *OIDCIssuer) Unsigned(t testing.TB, c Claims) string {
	t.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc(i.payload(t, c)) + "."
}

func (i *OIDCIssuer) payload(t testing.TB, c Claims) []byte {
	t.Helper()
	if c.Issuer == "" {
		c.Issuer = i.URL
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	if c.Expiry.IsZero() {
		c.Expiry = c.IssuedAt.Add(time.Hour)
	}
	b, err := json.Marshal(map[string]any{
		"iss": c.Issuer, "sub": c.Subject, "aud": c.Audience,
		"iat": c.IssuedAt.Unix(), "nbf": c.IssuedAt.Unix(), "exp": c.Expiry.Unix(),
		"kubernetes.io": map[string]any{"namespace": namespaceOf(c.Subject)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// namespaceOf is the namespace of a system:serviceaccount:<ns>:<name> subject.
func namespaceOf(subject string) string {
	f := strings.Split(subject, ":")
	if len(f) == 4 {
		return f[2]
	}
	return ""
}
