package rpcevents

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/fleet-ai/ray-executor/shared/config"
)

// DefaultMaxInflight bounds the request events one replica works on at once: four times the
// containerConcurrency Knative gives execute and status, so under Knative only a
// misconfigured cap or traffic that bypasses queue-proxy ever meets it.
const DefaultMaxInflight = 256

// MinTokenLength refuses internal credentials short enough to guess (16 random characters
// are ~95 bits).
const MinTokenLength = 16

// Access is who a function's server admits and how much work it takes on at once.
type Access struct {
	// Token (INTERNAL_TOKEN or INTERNAL_TOKEN_FILE) is the internal credential callers
	// present as "Authorization: Bearer <Token>". Empty admits every caller.
	Token string
	// OpenTypes (INTERNAL_AUTH_OPEN_TYPES) are the request types admitted without the
	// credential: what Knative Eventing delivers, since a Trigger or PingSource cannot add a
	// header. They rely on the Service being cluster-local.
	OpenTypes []string
	// MaxInflight (MAX_INFLIGHT) bounds the requests worked on at once; more are refused
	// with 429 at once, never queued.
	MaxInflight int
	// OIDC (EVENTING_OIDC_*): Knative Eventing's OIDC tokens, verified and mapped to callers.
	OIDC OIDC
}

// ReadAccess reads a function's Access. INTERNAL_AUTH_REQUIRED=true refuses to start
// without a token, so a deployment whose Secret is missing or empty never runs open. The
// token itself is never part of an error.
func ReadAccess(r *config.Reader) Access {
	a := Access{
		Token:       r.Secret("INTERNAL_TOKEN"),
		MaxInflight: r.Int("MAX_INFLIGHT", DefaultMaxInflight),
	}
	for _, t := range strings.Split(r.String("INTERNAL_AUTH_OPEN_TYPES", ""), ",") {
		if t = strings.TrimSpace(t); t != "" {
			a.OpenTypes = append(a.OpenTypes, t)
		}
	}
	required := r.Bool("INTERNAL_AUTH_REQUIRED", false)
	switch {
	case a.Token == "" && required:
		r.Fail("INTERNAL_AUTH_REQUIRED is true but INTERNAL_TOKEN (or INTERNAL_TOKEN_FILE) is unset or empty")
	case a.Token != "" && len(a.Token) < MinTokenLength:
		r.Fail("INTERNAL_TOKEN is %d characters, want at least %d", len(a.Token), MinTokenLength)
	case strings.ContainsAny(a.Token, " \t\r\n"):
		r.Fail("INTERNAL_TOKEN must not contain whitespace (it is sent in an HTTP header)")
	case len(a.Token) > MaxBearerBytes:
		r.Fail("INTERNAL_TOKEN is %d characters, want at most %d", len(a.Token), MaxBearerBytes)
	}
	a.OIDC = readOIDC(r)
	if a.MaxInflight <= 0 {
		r.Fail("MAX_INFLIGHT must be positive")
	}
	return a
}

// SetAccess makes the server admit callers as a says. Call it before serving. Open types
// the server does not handle are logged, since they are most likely a typo.
func (s *Server) SetAccess(a Access) {
	s.tokenHash = nil
	if a.Token != "" {
		h := sha256.Sum256([]byte(a.Token))
		s.tokenHash = &h
	}
	s.openTypes = map[string]bool{}
	var unknown []string
	for _, t := range a.OpenTypes {
		s.openTypes[t] = true
		if _, ok := s.routes[t]; !ok {
			unknown = append(unknown, t)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		s.logger.Warn("INTERNAL_AUTH_OPEN_TYPES names types this function does not handle",
			"types", unknown, "handled", s.Types())
	}
	s.maxInflight = int64(a.MaxInflight)
	if s.maxInflight <= 0 {
		s.maxInflight = DefaultMaxInflight
	}
	if s.tokenHash == nil {
		s.logger.Warn("INTERNAL_TOKEN is unset: this function accepts request events from any caller that reaches it")
	}
	s.oidc = nil
	if a.OIDC.Enabled() {
		s.oidc = newOIDCVerifier(a.OIDC, s.logger)
		s.logger.Info("Knative Eventing OIDC tokens are verified", "issuer", a.OIDC.Issuer,
			"audience", a.OIDC.Audience, "subjects", len(a.OIDC.Callers))
	}
}

// credential says what a request presented.
type credential int

const (
	credentialNone credential = iota // no bearer token
	credentialWrong
	credentialValid     // the internal credential (or none is configured): the ingress's word
	credentialVerified  // a verified Eventing OIDC token of a mapped subject
	credentialUnchecked // an OIDC token that cannot be checked now (the issuer is unreachable)
)

// authn is what authenticate found: the credential, and for a verified token who it is.
type authn struct {
	cred    credential
	caller  OIDCCaller
	subject string
	reason  string // why a token was refused; fixed text, never the token
	detail  string // more for the log
}

// admitted reports whether the request carries a credential this function accepts.
func (a authn) admitted() bool { return a.cred == credentialValid || a.cred == credentialVerified }

// authenticate checks the request's bearer token: the internal credential, compared in
// constant time (SHA-256 digests, so that the time is independent of the token's length
// too, which subtle.ConstantTimeCompare alone would reveal), else, when this function
// verifies them, a Knative Eventing OIDC token. Headers only: the body is not read.
func (s *Server) authenticate(r *http.Request) authn {
	if s.tokenHash == nil && s.oidc == nil {
		return authn{cred: credentialValid}
	}
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		if s.tokenHash == nil {
			return authn{cred: credentialValid}
		}
		return authn{cred: credentialNone}
	}
	if len(token) > MaxBearerBytes {
		return authn{cred: credentialWrong, reason: reasonOversize}
	}
	if s.tokenHash != nil {
		got := sha256.Sum256([]byte(token))
		if subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) == 1 {
			return authn{cred: credentialValid}
		}
	}
	if s.oidc == nil {
		return authn{cred: credentialWrong, reason: reasonNotInternal}
	}
	c, subject, err := s.oidc.verify(r.Context(), token)
	if err != nil {
		var te *tokenError
		if !errors.As(err, &te) {
			te = refuse(reasonInvalid, err)
		}
		a := authn{cred: credentialWrong, subject: subject, reason: te.reason, detail: te.detail}
		if te.unavailable {
			a.cred = credentialUnchecked
		}
		return a
	}
	return authn{cred: credentialVerified, caller: c, subject: subject}
}

// refuseUnauthenticated answers 401 with the challenge RFC 6750 asks for, and logs why
// (never the token).
func (s *Server) refuseUnauthenticated(w http.ResponseWriter, r *http.Request, a authn) {
	challenge, msg := "Bearer", "this function accepts only callers presenting the internal credential: send Authorization: Bearer and the deployment's INTERNAL_TOKEN"
	if s.oidc != nil {
		msg = "this function accepts only callers presenting the internal credential or a Knative Eventing OIDC token for its audience"
	}
	if a.cred == credentialWrong {
		challenge, msg = `Bearer error="invalid_token"`, a.reason
	}
	s.logger.Info("request refused", "status", http.StatusUnauthorized, "credential", a.cred.String(),
		"reason", a.reason, "detail", a.detail, "subject", a.subject,
		"remote", r.RemoteAddr, "ce_type", headerValue(r.Header, headerType))
	w.Header().Set("WWW-Authenticate", challenge)
	writeError(w, http.StatusUnauthorized, "unauthenticated", msg)
}

// refuseUnchecked answers 503 (retried by Knative) for a token the issuer could not be asked
// about now.
func (s *Server) refuseUnchecked(w http.ResponseWriter, r *http.Request, a authn) {
	s.logger.Warn("request refused", "status", http.StatusServiceUnavailable, "credential", a.cred.String(),
		"reason", a.reason, "detail", a.detail, "remote", r.RemoteAddr, "ce_type", headerValue(r.Header, headerType))
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, "unavailable", a.reason)
}

// refuseReadOnly answers 403 to a caller with the read role asking to start or stop work.
func (s *Server) refuseReadOnly(w http.ResponseWriter, r *http.Request, a authn, ceType string) {
	s.logger.Info("request refused", "status", http.StatusForbidden, "caller", a.caller.Caller.Name,
		"subject", a.subject, "remote", r.RemoteAddr, "ce_type", ceType)
	writeError(w, http.StatusForbidden, "permission_denied",
		fmt.Sprintf("caller %q has the read role: it may not submit or cancel deliberations", a.caller.Caller.Name))
}

func (c credential) String() string {
	switch c {
	case credentialNone:
		return "missing"
	case credentialWrong:
		return "wrong"
	case credentialVerified:
		return "oidc"
	case credentialUnchecked:
		return "unchecked"
	}
	return "valid"
}

// acquire takes one of the replica's in-flight slots, or reports that all are taken.
func (s *Server) acquire() bool {
	if s.inflight.Add(1) > s.maxInflight {
		s.inflight.Add(-1)
		return false
	}
	inflightGauge.Add(context.Background(), 1)
	return true
}

func (s *Server) release() {
	s.inflight.Add(-1)
	inflightGauge.Add(context.Background(), -1)
}

// refuseBusy answers 429 at once: a caller told to come back in a second (Knative Eventing
// retries 429 with backoff) costs this replica nothing, a queue would cost it memory and
// every queued caller latency.
func (s *Server) refuseBusy(w http.ResponseWriter) {
	s.logger.Warn("request refused: too many in flight", "status", http.StatusTooManyRequests, "max_inflight", s.maxInflight)
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusTooManyRequests, "resource_exhausted",
		fmt.Sprintf("this replica is already working on %d requests; retry shortly", s.maxInflight))
}
