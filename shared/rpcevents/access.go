package rpcevents

import (
	"crypto/sha256"
	"crypto/subtle"
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
	}
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
}

// credential says what a request presented.
type credential int

const (
	credentialNone credential = iota // no bearer token
	credentialWrong
	credentialValid
)

// authenticate checks the request's bearer token against the internal credential in
// constant time. Comparing SHA-256 digests keeps the time independent of the token's length
// too, which subtle.ConstantTimeCompare alone would reveal.
func (s *Server) authenticate(h http.Header) credential {
	if s.tokenHash == nil {
		return credentialValid
	}
	scheme, token, ok := strings.Cut(h.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return credentialNone
	}
	got := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) != 1 {
		return credentialWrong
	}
	return credentialValid
}

// refuseUnauthenticated answers 401 with the challenge RFC 6750 asks for.
func (s *Server) refuseUnauthenticated(w http.ResponseWriter, r *http.Request, c credential) {
	challenge, msg := "Bearer", "this function accepts only callers presenting the internal credential: send Authorization: Bearer and the deployment's INTERNAL_TOKEN"
	if c == credentialWrong {
		challenge, msg = `Bearer error="invalid_token"`, "the bearer token is not this deployment's internal credential"
	}
	s.logger.Info("request refused", "status", http.StatusUnauthorized, "credential", c.String(),
		"remote", r.RemoteAddr, "ce_type", headerValue(r.Header, headerType))
	w.Header().Set("WWW-Authenticate", challenge)
	writeError(w, http.StatusUnauthorized, "unauthenticated", msg)
}

func (c credential) String() string {
	switch c {
	case credentialNone:
		return "missing"
	case credentialWrong:
		return "wrong"
	}
	return "valid"
}

// acquire takes one of the replica's in-flight slots, or reports that all are taken.
func (s *Server) acquire() bool {
	if s.inflight.Add(1) > s.maxInflight {
		s.inflight.Add(-1)
		return false
	}
	return true
}

func (s *Server) release() { s.inflight.Add(-1) }

// refuseBusy answers 429 at once: a caller told to come back in a second (Knative Eventing
// retries 429 with backoff) costs this replica nothing, a queue would cost it memory and
// every queued caller latency.
func (s *Server) refuseBusy(w http.ResponseWriter) {
	s.logger.Warn("request refused: too many in flight", "status", http.StatusTooManyRequests, "max_inflight", s.maxInflight)
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusTooManyRequests, "resource_exhausted",
		fmt.Sprintf("this replica is already working on %d requests; retry shortly", s.maxInflight))
}
