package rpcevents

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/domain"
)

// Knative Eventing's OIDC sender authentication (the `authentication-oidc` feature): a
// Trigger whose subscriber names an audience is delivered with "Authorization: Bearer <JWT>",
// a token the cluster's service-account issuer made for the Trigger's own OIDC service
// account (subject system:serviceaccount:<namespace>:<name>) and that audience. A function
// configured with the issuer verifies such a token on the request's headers alone, before it
// reads the body, and treats the request as coming from the caller its subject is mapped to.

// MaxBearerBytes bounds a presented bearer token, checked before anything parses it. A
// Kubernetes service-account token is about 1 KiB.
const MaxBearerBytes = 8 << 10

// In-cluster defaults of the discovery and key requests.
const (
	DefaultOIDCDiscoveryURL = "https://kubernetes.default.svc"
	inClusterCAFile         = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	inClusterTokenFile      = "/var/run/secrets/kubernetes.io/serviceaccount/token"
)

const (
	// defaultKeyRefresh is the least time between two fetches of the issuer's keys caused by
	// tokens naming a key the function does not know: a stranger making up key ids costs
	// the issuer one request in this time, never one per token.
	defaultKeyRefresh = 10 * time.Second
	// keyMaxAge: keys older than this are fetched again (in the background, the request
	// goes on with the cached ones), so a key the issuer dropped stops verifying.
	keyMaxAge = 10 * time.Minute
	// issuerTimeout bounds one discovery or key request; issuerMaxBytes one answer.
	issuerTimeout  = 10 * time.Second
	issuerMaxBytes = 1 << 20
)

// OIDC is how a function verifies Knative Eventing's OIDC tokens. The zero value is off.
type OIDC struct {
	// Issuer (EVENTING_OIDC_ISSUER) is the `iss` every token must carry: the cluster's
	// service-account issuer. Empty: tokens are not verified.
	Issuer string
	// Audience (EVENTING_OIDC_AUDIENCE) is the `aud` a token must include: the audience the
	// Triggers routing to this function name for their subscriber, one per function.
	Audience string
	// DiscoveryURL (EVENTING_OIDC_DISCOVERY_URL) is where the discovery document is fetched
	// from (DiscoveryURL/.well-known/openid-configuration); it must name Issuer. Default:
	// the Kubernetes API server, which serves its issuer's document and keys to service
	// accounts whatever the issuer's own address.
	DiscoveryURL string
	// RootCAs (the system's plus EVENTING_OIDC_CA_FILE) verify the discovery and key
	// servers.
	RootCAs *x509.CertPool
	// TokenFile (EVENTING_OIDC_TOKEN_FILE) holds the bearer token sent with the discovery
	// and key requests (read at each: the kubelet rotates it); empty sends none.
	TokenFile string
	// Callers (EVENTING_OIDC_CALLERS) maps a verified subject to the caller it acts as.
	Callers map[string]OIDCCaller
	// KeyRefresh is the least time between two key fetches for unknown key ids (tests).
	KeyRefresh time.Duration
	// Now is the clock tokens are checked against (tests); time.Now when nil.
	Now func() time.Time
}

// Enabled reports whether tokens are verified.
func (o OIDC) Enabled() bool { return o.Issuer != "" }

// OIDCCaller is who a verified subject acts as.
type OIDCCaller struct {
	Caller domain.Caller
	// ReadOnly callers are refused the request types that start or stop work (WriteType).
	ReadOnly bool
}

// WriteType reports whether ceType starts or stops work: what a caller with the read role
// is refused, here as at the ingress.
func WriteType(ceType string) bool {
	switch ceType {
	case TypeExecuteDeliberation, TypeExecuteBacklogReviewDeliberation, TypeCancelDeliberation:
		return true
	}
	return false
}

// readOIDC reads the EVENTING_OIDC_* settings. Files are read here, so that a missing CA or
// token file named explicitly stops the start; the in-cluster defaults apply only when
// present.
func readOIDC(r *config.Reader) OIDC {
	o := OIDC{
		Issuer:       r.String("EVENTING_OIDC_ISSUER", ""),
		Audience:     r.String("EVENTING_OIDC_AUDIENCE", ""),
		DiscoveryURL: r.String("EVENTING_OIDC_DISCOVERY_URL", DefaultOIDCDiscoveryURL),
	}
	caFile, tokenFile := r.String("EVENTING_OIDC_CA_FILE", ""), r.String("EVENTING_OIDC_TOKEN_FILE", "")
	callers := r.String("EVENTING_OIDC_CALLERS", "")
	if !o.Enabled() {
		return OIDC{}
	}
	if o.Audience == "" {
		r.Fail("EVENTING_OIDC_AUDIENCE must be set with EVENTING_OIDC_ISSUER: the audience this function's Triggers name for their subscriber")
	}
	for name, v := range map[string]string{"EVENTING_OIDC_ISSUER": o.Issuer, "EVENTING_OIDC_DISCOVERY_URL": o.DiscoveryURL} {
		if u, err := url.Parse(v); err != nil || u.Scheme != "https" || u.Host == "" {
			r.Fail("%s=%q must be an https:// URL", name, v)
		}
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if caFile == "" && fileExists(inClusterCAFile) {
		caFile = inClusterCAFile
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		switch {
		case err != nil:
			r.Fail("EVENTING_OIDC_CA_FILE: %v", err)
		case !pool.AppendCertsFromPEM(pem):
			r.Fail("EVENTING_OIDC_CA_FILE %s holds no PEM certificate", caFile)
		}
	}
	o.RootCAs = pool
	if tokenFile == "" && fileExists(inClusterTokenFile) {
		tokenFile = inClusterTokenFile
	}
	if tokenFile != "" {
		if _, err := readTokenFile(tokenFile); err != nil {
			r.Fail("EVENTING_OIDC_TOKEN_FILE: %v", err)
		}
	}
	o.TokenFile = tokenFile
	m, err := ParseOIDCCallers(callers)
	if err != nil {
		r.Fail("%v", err)
	}
	o.Callers = m
	return o
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// readTokenFile reads a bearer token file; the token is never part of an error.
func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	switch {
	case tok == "":
		return "", fmt.Errorf("%s is empty", path)
	case len(tok) > MaxBearerBytes || strings.ContainsAny(tok, " \t\r\n"):
		return "", fmt.Errorf("%s does not hold one bearer token (at most %d bytes, no whitespace)", path, MaxBearerBytes)
	}
	return tok, nil
}

// ParseOIDCCallers reads EVENTING_OIDC_CALLERS: one subject a line,
// `<subject> <caller-name> [read|write|admin]` (write when left out), the same roles as the
// ingress's AUTH_TOKENS; blank lines and lines starting with '#' are ignored. An empty list
// is an error: with the issuer set, it would refuse every token.
func ParseOIDCCallers(text string) (map[string]OIDCCaller, error) {
	var errs []error
	m := map[string]OIDCCaller{}
	lines := map[string]int{}
	for i, line := range strings.Split(text, "\n") {
		n := i + 1
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || len(f) > 3 {
			errs = append(errs, fmt.Errorf("line %d: want `<subject> <caller-name> [read|write|admin]`, got %d fields", n, len(f)))
			continue
		}
		c := OIDCCaller{Caller: domain.Caller{Name: f[1]}}
		if len(f) == 3 {
			switch f[2] {
			case "read":
				c.ReadOnly = true
			case "admin":
				c.Caller.Admin = true
			case "write":
			default:
				errs = append(errs, fmt.Errorf("line %d: the role (third field) must be read, write or admin, got %q", n, f[2]))
				continue
			}
		}
		if prev, dup := lines[f[0]]; dup {
			errs = append(errs, fmt.Errorf("line %d: subject %q is mapped on line %d already", n, f[0], prev))
			continue
		}
		lines[f[0]] = n
		m[f[0]] = c
	}
	if len(errs) == 0 && len(m) == 0 {
		errs = append(errs, errors.New("maps no subject: with EVENTING_OIDC_ISSUER set every token would be refused"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("EVENTING_OIDC_CALLERS: %w", errors.Join(errs...))
	}
	return m, nil
}

// Why a token is refused: fixed texts, safe to tell the sender and to log. None quotes the
// token or anything taken from it.
const (
	reasonOversize     = "the bearer token is larger than 8192 bytes"
	reasonMalformed    = "the bearer token is not a JWT signed with an algorithm the issuer uses"
	reasonUnknownKey   = "the token is not signed by a key of the issuer"
	reasonSignature    = "the token's signature does not verify"
	reasonExpired      = "the token has expired"
	reasonIssuer       = "the token is from another issuer"
	reasonAudience     = "the token is not for this function's audience"
	reasonUnmapped     = "the token's subject is not a caller of this function (EVENTING_OIDC_CALLERS)"
	reasonInvalid      = "the token is not valid"
	reasonNotInternal  = "the bearer token is not this deployment's internal credential"
	reasonUnavailable  = "the cluster's OIDC issuer cannot be reached to verify the token; retry shortly"
	reasonKeysThrottle = "the token names a key the issuer did not list moments ago; retry shortly"
)

// tokenError is a refused token: reason is for the sender, detail for the log.
type tokenError struct {
	reason      string
	detail      string
	unavailable bool // the issuer could not be asked: 503, retryable
}

func (e *tokenError) Error() string { return e.reason }

// unavailable is a token that could not be checked now: 503, which Knative retries.
func unavailable(reason, detail string) *tokenError {
	return &tokenError{reason: reason, detail: detail, unavailable: true}
}

func refuse(reason string, detail error) *tokenError {
	e := &tokenError{reason: reason}
	if detail != nil {
		e.detail = detail.Error()
	}
	return e
}

// oidcVerifier verifies tokens against the issuer it discovers on first use.
type oidcVerifier struct {
	cfg    OIDC
	client *http.Client
	logger *slog.Logger
	keys   *keyCache

	mu       sync.Mutex // held during discovery: concurrent first tokens wait for one
	verifier *oidc.IDTokenVerifier
	failedAt time.Time // last failed discovery: the next waits KeyRefresh
}

func newOIDCVerifier(cfg OIDC, logger *slog.Logger) *oidcVerifier {
	if cfg.KeyRefresh <= 0 {
		cfg.KeyRefresh = defaultKeyRefresh
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.DiscoveryURL == "" {
		cfg.DiscoveryURL = cfg.Issuer
	}
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.TLSClientConfig = &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12}
	client := &http.Client{
		Timeout:   issuerTimeout,
		Transport: &issuerTransport{base: base, tokenFile: cfg.TokenFile},
		// A redirect would carry the token where nobody configured it to go.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return &oidcVerifier{cfg: cfg, client: client, logger: logger}
}

// issuerTransport adds the service-account token to the discovery and key requests (over
// TLS only) and bounds their answers.
type issuerTransport struct {
	base      http.RoundTripper
	tokenFile string
}

func (t *issuerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("refusing %s: the issuer is asked over https only", req.URL.Redacted())
	}
	if t.tokenFile != "" {
		tok, err := readTokenFile(t.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("EVENTING_OIDC_TOKEN_FILE: %w", err)
		}
		req = req.Clone(req.Context())
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &boundedBody{ReadCloser: resp.Body, left: issuerMaxBytes}
	return resp, nil
}

// boundedBody fails a read past its bound instead of growing without one.
type boundedBody struct {
	io.ReadCloser
	left int64
}

func (b *boundedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("the issuer's answer is over %d bytes", issuerMaxBytes)
	}
	if int64(len(p)) > b.left {
		p = p[:b.left+1] // one byte more tells a body of exactly the bound from a longer one
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return n, fmt.Errorf("the issuer's answer is over %d bytes", issuerMaxBytes)
	}
	return n, err
}

// discover returns the verifier, fetching the discovery document on first use (and after
// a failure, at most once per refresh interval).
func (v *oidcVerifier) discover(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.verifier != nil {
		return v.verifier, nil
	}
	now := v.cfg.Now()
	if !v.failedAt.IsZero() && now.Sub(v.failedAt) < v.cfg.KeyRefresh {
		return nil, unavailable(reasonUnavailable, "discovery failed moments ago")
	}
	ctx, cancel := context.WithTimeout(ctx, issuerTimeout)
	defer cancel()
	ctx = oidc.ClientContext(ctx, v.client)
	// The document is fetched from DiscoveryURL and must name Issuer, which tokens must
	// carry: the Kubernetes API server answers for its issuer whatever that one's address.
	var meta discovery
	provider, err := oidc.NewProvider(oidc.InsecureIssuerURLContext(ctx, v.cfg.Issuer), v.cfg.DiscoveryURL)
	if err == nil {
		meta, err = v.checkDiscovered(provider)
	}
	if err != nil {
		v.failedAt = now
		v.logger.Error("Eventing OIDC issuer discovery failed: tokens cannot be verified until it succeeds",
			"discovery_url", v.cfg.DiscoveryURL, "issuer", v.cfg.Issuer, "error", err.Error())
		return nil, unavailable(reasonUnavailable, "discovery failed: "+err.Error())
	}
	algs := signingAlgs(meta.Algs)
	v.keys = &keyCache{url: meta.JWKSURI, client: v.client, algs: algs, refresh: v.cfg.KeyRefresh, now: v.cfg.Now, logger: v.logger}
	v.verifier = oidc.NewVerifier(v.cfg.Issuer, v.keys, &oidc.Config{
		ClientID:             v.cfg.Audience,
		SupportedSigningAlgs: algNames(algs),
		Now:                  v.cfg.Now,
	})
	v.logger.Info("Eventing OIDC issuer discovered", "issuer", v.cfg.Issuer, "jwks_uri", meta.JWKSURI, "algorithms", algNames(algs))
	return v.verifier, nil
}

// discovery is what this function uses of the issuer's discovery document.
type discovery struct {
	Issuer  string   `json:"issuer"`
	JWKSURI string   `json:"jwks_uri"`
	Algs    []string `json:"id_token_signing_alg_values_supported"`
}

// checkDiscovered refuses a discovery document naming another issuer, no https key set, or
// no algorithm this function accepts.
func (v *oidcVerifier) checkDiscovered(p *oidc.Provider) (discovery, error) {
	var meta discovery
	if err := p.Claims(&meta); err != nil {
		return meta, err
	}
	switch u, err := url.Parse(meta.JWKSURI); {
	case meta.Issuer != v.cfg.Issuer:
		return meta, fmt.Errorf("the discovery document names issuer %q, want %q (EVENTING_OIDC_ISSUER)", meta.Issuer, v.cfg.Issuer)
	case err != nil || u.Scheme != "https" || u.Host == "":
		return meta, fmt.Errorf("the discovery document's jwks_uri %q is not an https URL", meta.JWKSURI)
	case len(signingAlgs(meta.Algs)) == 0:
		return meta, fmt.Errorf("the discovery document lists no signing algorithm this function accepts: %q", meta.Algs)
	}
	return meta, nil
}

// accepted are the asymmetric algorithms a token may be signed with; "none" and the
// symmetric ones never are.
var accepted = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256, jose.PS384, jose.PS512, jose.EdDSA}

// signingAlgs are the issuer's algorithms this function accepts (RS256 when it lists none,
// as OIDC discovery mandates).
func signingAlgs(listed []string) []jose.SignatureAlgorithm {
	if len(listed) == 0 {
		return []jose.SignatureAlgorithm{jose.RS256}
	}
	var out []jose.SignatureAlgorithm
	for _, a := range accepted {
		if slices.Contains(listed, string(a)) {
			out = append(out, a)
		}
	}
	return out
}

func algNames(algs []jose.SignatureAlgorithm) []string {
	out := make([]string, len(algs))
	for i, a := range algs {
		out[i] = string(a)
	}
	return out
}

// verify checks raw (at most MaxBearerBytes, checked by the caller) and returns the caller
// its subject is mapped to and the subject. Errors are *tokenError.
func (v *oidcVerifier) verify(ctx context.Context, raw string) (OIDCCaller, string, error) {
	verifier, err := v.discover(ctx)
	if err != nil {
		return OIDCCaller{}, "", err
	}
	out := &sigOutcome{}
	tok, err := verifier.Verify(context.WithValue(ctx, sigOutcomeKey{}, out), raw)
	if err != nil {
		return OIDCCaller{}, "", v.classify(err, out)
	}
	c, ok := v.cfg.Callers[tok.Subject]
	if !ok {
		return OIDCCaller{}, tok.Subject, refuse(reasonUnmapped, fmt.Errorf("subject %q is not in EVENTING_OIDC_CALLERS", tok.Subject))
	}
	return c, tok.Subject, nil
}

// classify turns go-oidc's error into a reason. The key set records how the signature
// fared (go-oidc does not wrap its error); the claims of a token whose signature verified
// tell issuer from audience.
func (v *oidcVerifier) classify(err error, out *sigOutcome) *tokenError {
	var expired *oidc.TokenExpiredError
	switch {
	case out.err != nil:
		return out.err
	case out.payload == nil:
		return refuse(reasonMalformed, err) // refused before the key set was asked: parse or algorithm
	case errors.As(err, &expired):
		return refuse(reasonExpired, err)
	}
	var claims struct {
		Issuer   string          `json:"iss"`
		Audience json.RawMessage `json:"aud"`
	}
	if json.Unmarshal(out.payload, &claims) == nil {
		var auds []string
		if json.Unmarshal(claims.Audience, &auds) != nil {
			var one string
			if json.Unmarshal(claims.Audience, &one) == nil {
				auds = []string{one}
			}
		}
		switch {
		case claims.Issuer != v.cfg.Issuer:
			return refuse(reasonIssuer, err)
		case !slices.Contains(auds, v.cfg.Audience):
			return refuse(reasonAudience, err)
		}
	}
	return refuse(reasonInvalid, err)
}

// sigOutcome is how the key set fared with one token, passed through go-oidc in the context.
type sigOutcome struct {
	payload []byte
	err     *tokenError
}

type sigOutcomeKey struct{}

// keyCache is the issuer's signing keys by key id (an oidc.KeySet). A token naming a cached
// key is verified with it and nothing else: the keys are fetched again only for a key id
// not seen (at most once per refresh interval, however many tokens name unknown ids), and
// in the background once they are keyMaxAge old.
type keyCache struct {
	url     string
	client  *http.Client
	algs    []jose.SignatureAlgorithm
	refresh time.Duration
	logger  *slog.Logger

	mu        sync.Mutex
	keys      map[string]jose.JSONWebKey
	now       func() time.Time
	fetchedAt time.Time     // start of the last fetch, successful or not
	loadedAt  time.Time     // start of the last successful fetch
	fetching  chan struct{} // closed when the fetch in progress ends; nil when none is
}

func (k *keyCache) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	out, _ := ctx.Value(sigOutcomeKey{}).(*sigOutcome)
	if out == nil {
		out = &sigOutcome{}
	}
	payload, terr := k.verify(ctx, raw)
	out.payload, out.err = payload, terr
	if terr != nil {
		return nil, terr
	}
	return payload, nil
}

func (k *keyCache) verify(ctx context.Context, raw string) ([]byte, *tokenError) {
	jws, err := jose.ParseSigned(raw, k.algs)
	if err != nil || len(jws.Signatures) != 1 {
		return nil, refuse(reasonMalformed, err)
	}
	kid := jws.Signatures[0].Header.KeyID
	if kid == "" {
		return nil, refuse(reasonUnknownKey, errors.New("the token names no key id (kid)"))
	}
	key, ok, terr := k.key(ctx, kid)
	if terr != nil {
		return nil, terr
	}
	if !ok {
		return nil, refuse(reasonUnknownKey, errors.New("the issuer lists no key with the token's kid"))
	}
	payload, err := jws.Verify(&key)
	if err != nil {
		return nil, refuse(reasonSignature, err)
	}
	return payload, nil
}

// key returns the key with id kid, fetching the keys when kid is unknown and the last fetch
// is older than the refresh interval. A fetch that just ended is never repeated within it.
func (k *keyCache) key(ctx context.Context, kid string) (jose.JSONWebKey, bool, *tokenError) {
	k.mu.Lock()
	key, ok := k.keys[kid]
	now := k.now()
	if ok {
		if now.Sub(k.loadedAt) > keyMaxAge && k.fetching == nil && now.Sub(k.fetchedAt) >= k.refresh {
			k.startFetch(now) // stale: refreshed behind this request
		}
		k.mu.Unlock()
		return key, true, nil
	}
	wait := k.fetching
	if wait == nil {
		if !k.fetchedAt.IsZero() && now.Sub(k.fetchedAt) < k.refresh {
			failed := k.loadedAt.Before(k.fetchedAt)
			k.mu.Unlock()
			if failed {
				return jose.JSONWebKey{}, false, unavailable(reasonUnavailable, "fetching the issuer's keys failed moments ago")
			}
			return jose.JSONWebKey{}, false, unavailable(reasonKeysThrottle, "unknown key id; the keys were fetched less than the refresh interval ago")
		}
		wait = k.startFetch(now)
	}
	k.mu.Unlock()
	select {
	case <-wait:
	case <-ctx.Done():
		return jose.JSONWebKey{}, false, unavailable(reasonUnavailable, ctx.Err().Error())
	}
	k.mu.Lock()
	key, ok = k.keys[kid]
	failed := k.loadedAt.Before(k.fetchedAt)
	k.mu.Unlock()
	switch {
	case ok:
		return key, true, nil
	case failed:
		return jose.JSONWebKey{}, false, unavailable(reasonUnavailable, "fetching the issuer's keys failed")
	}
	return jose.JSONWebKey{}, false, nil
}

// startFetch begins fetching the keys; k.mu is held.
func (k *keyCache) startFetch(now time.Time) chan struct{} {
	done := make(chan struct{})
	k.fetching, k.fetchedAt = done, now
	go func() {
		keys, err := k.fetch()
		k.mu.Lock()
		if err == nil {
			k.keys, k.loadedAt = keys, k.fetchedAt
		} else {
			k.logger.Error("fetching the Eventing OIDC issuer's keys failed", "jwks_uri", k.url, "error", err.Error())
		}
		k.fetching = nil
		k.mu.Unlock()
		close(done)
	}()
	return done
}

// fetch reads the issuer's key set. Keys of other kinds or algorithms are skipped, as the
// JWK Set specification asks; a set with no usable key is an error.
func (k *keyCache) fetch() (map[string]jose.JSONWebKey, error) {
	ctx, cancel := context.WithTimeout(context.Background(), issuerTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s", k.url, resp.Status)
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("the key set is not JSON: %v", err)
	}
	keys := map[string]jose.JSONWebKey{}
	for _, raw := range set.Keys {
		var jwk jose.JSONWebKey
		if jwk.UnmarshalJSON(raw) != nil || jwk.KeyID == "" || !jwk.IsPublic() || jwk.Use == "enc" {
			continue
		}
		if jwk.Algorithm != "" && !slices.Contains(k.algs, jose.SignatureAlgorithm(jwk.Algorithm)) {
			continue
		}
		keys[jwk.KeyID] = jwk
	}
	if len(keys) == 0 {
		return nil, errors.New("the key set holds no public signing key with a key id")
	}
	return keys, nil
}
