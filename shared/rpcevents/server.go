package rpcevents

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// DefaultMaxBodyBytes bounds a request event, and is the execute function's default
// MAX_BODY_BYTES. The largest request the default domain limits admit (256 KiB description,
// 16 KiB metadata, 32 agents with 16 KiB prompt templates) is about 0.8 MiB as protobuf,
// the ingress's encoding, and under 2 MiB as protobuf JSON unless its text is mostly control
// characters (see domain.DefaultLimits). A replica holds at most MAX_INFLIGHT bodies at once.
const DefaultMaxBodyBytes = 2 << 20

// Handler answers one decoded request event. A nil reply (with a nil error) is answered
// 202 Accepted without a reply event.
type Handler func(ctx context.Context, req *Request) (proto.Message, error)

// Request is a decoded request event.
type Request struct {
	Event *event.Event
	// Base is the server's logger; Logger adds the event's attributes to it.
	Base   *slog.Logger
	logger *slog.Logger
	// vouched: the request carried the internal credential (or none is configured), so
	// its caller attributes are the ingress's word.
	vouched bool
	// verified: the request carried a verified Eventing OIDC token; caller is its subject's.
	verified bool
	caller   domain.Caller
}

// Caller is who the request is from: the caller a verified Eventing OIDC token's subject is
// mapped to (whatever the event's caller attributes say), else the ingress's ExtCaller and
// ExtCallerRole when the request carried the internal credential, else anonymous (an open
// event type delivered without a credential names whatever caller it likes).
func (r *Request) Caller() domain.Caller {
	if r.verified {
		return r.caller
	}
	if !r.vouched {
		return domain.Caller{}
	}
	name, _ := r.Event.Extensions()[ExtCaller].(string)
	role, _ := r.Event.Extensions()[ExtCallerRole].(string)
	return domain.Caller{Name: name, Admin: name != "" && role == "admin"}
}

// Logger is the request's logger, tagged with the event's id, type and source. It is made
// on first use: most requests never log.
func (r *Request) Logger() *slog.Logger {
	if r.logger == nil {
		r.logger = r.Base.With("ce_id", r.Event.ID(), "ce_type", r.Event.Type(), "ce_source", r.Event.Source())
	}
	return r.logger
}

// IdempotencyKey is the request's key (see KeyFor).
func (r *Request) IdempotencyKey() string {
	key, _ := r.Event.Extensions()[ExtIdempotencyKey].(string)
	return KeyFor(r.Event.Source(), r.Event.ID(), key)
}

// Traceparent is the request's W3C trace context, if it carried a valid one.
func (r *Request) Traceparent() string {
	tp, _ := r.Event.Extensions()[ExtTraceparent].(string)
	return domain.CleanTraceparent(tp) // anything but a valid W3C value is dropped
}

// Route builds a Handler that decodes the event's data into a fresh Req and calls h.
func Route[Req proto.Message](newReq func() Req, h func(ctx context.Context, r *Request, req Req) (proto.Message, error)) Handler {
	return func(ctx context.Context, r *Request) (proto.Message, error) {
		req := newReq()
		if err := decodeData(r.Event, req); err != nil {
			return nil, err
		}
		return h(ctx, r, req)
	}
}

func decodeData(ev *event.Event, into proto.Message) error {
	return unmarshalData(ev.DataContentType(), ev.Data(), into)
}

// unmarshalData decodes event data by its content type: protobuf JSON (the default, what
// event-driven callers send) or binary protobuf (what the ingress sends, at a tenth of the
// cost). Errors wrap ErrInvalid.
func unmarshalData(contentType string, data []byte, into proto.Message) error {
	mt := mediaType(contentType)
	switch {
	case mt == "" || mt == event.ApplicationJSON || strings.HasSuffix(mt, "+json"):
		if len(data) == 0 {
			data = []byte("{}")
		}
		if err := CheckJSONShape(data, into.ProtoReflect().Descriptor()); err != nil {
			return err
		}
		if err := unmarshalOptions.Unmarshal(data, into); err != nil {
			return fmt.Errorf("data is not a valid %s in protobuf JSON: %v: %w",
				into.ProtoReflect().Descriptor().FullName(), err, domain.ErrInvalid)
		}
	case mt == ContentTypeProtobuf:
		if err := CheckWireShape(BytesSource(data), len(data), into.ProtoReflect().Descriptor()); err != nil {
			return err
		}
		if err := proto.Unmarshal(data, into); err != nil {
			return fmt.Errorf("data is not a valid binary %s: %v: %w",
				into.ProtoReflect().Descriptor().FullName(), err, domain.ErrInvalid)
		}
	default:
		return fmt.Errorf("datacontenttype must be %s or %s, got %q: %w",
			event.ApplicationJSON, ContentTypeProtobuf, contentType, domain.ErrInvalid)
	}
	return nil
}

// marshalData encodes a message as protobuf JSON, or as binary protobuf when asked.
func marshalData(msg proto.Message, binary bool) (data []byte, contentType string, err error) {
	if binary {
		data, err = proto.Marshal(msg)
		return data, ContentTypeProtobuf, err
	}
	data, err = marshalOptions.Marshal(msg)
	return data, event.ApplicationJSON, err
}

// mediaType is the media type of a Content-Type value, lower-cased, without parameters.
func mediaType(ct string) string {
	if ct == event.ApplicationJSON || ct == ContentTypeProtobuf || ct == "" {
		return ct // the common cases, without parsing
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return ct
	}
	return mt
}

// Server is the HTTP side of a function: it accepts request events in binary and structured
// mode, dispatches them by type and replies with a CloudEvent in binary mode.
//
// Every caller is admitted and at most DefaultMaxInflight requests are worked on at once
// until SetAccess says otherwise.
type Server struct {
	source       string
	logger       *slog.Logger
	maxBodyBytes int64
	routes       map[string]Handler
	// tokenHash is the SHA-256 of the internal credential; nil admits every caller.
	tokenHash *[sha256.Size]byte
	// openTypes are admitted without the credential.
	openTypes map[string]bool
	// oidc verifies Knative Eventing's OIDC tokens; nil when off.
	oidc        *oidcVerifier
	maxInflight int64
	inflight    atomic.Int64
}

// NewServer returns a server whose replies name source (the function's URI reference, e.g.
// "ray-executor/execute").
func NewServer(source string, logger *slog.Logger, maxBodyBytes int64) *Server {
	if maxBodyBytes <= 0 {
		maxBodyBytes = DefaultMaxBodyBytes
	}
	return &Server{source: source, logger: logger, maxBodyBytes: maxBodyBytes,
		routes: map[string]Handler{}, maxInflight: DefaultMaxInflight}
}

// Handle routes request events of type ceType to h.
func (s *Server) Handle(ceType string, h Handler) { s.routes[ceType] = h }

// Types lists the request types the server handles, sorted.
func (s *Server) Types() []string {
	types := make([]string, 0, len(s.routes))
	for t := range s.routes {
		types = append(types, t)
	}
	sort.Strings(types)
	return types
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "send CloudEvents with POST")
		return
	}
	// The credential is checked before the body is read: a caller without it costs a header
	// comparison (or, for an Eventing OIDC token, a signature check against cached keys).
	// Only an open type may go further without it; in binary mode the type is a header, so
	// everything else is refused here, in structured mode it is known only once the body is
	// decoded. A token that fails verification is refused whatever the type.
	a := s.authenticate(r)
	if a.cred == credentialUnchecked {
		s.refuseUnchecked(w, r, a)
		return
	}
	binary := isBinary(r.Header)
	if !a.admitted() && (len(s.openTypes) == 0 || binary && !s.openTypes[headerValue(r.Header, headerType)] ||
		a.cred == credentialWrong && s.oidc != nil) {
		s.refuseUnauthenticated(w, r, a)
		return
	}
	if a.caller.ReadOnly && binary && WriteType(headerValue(r.Header, headerType)) {
		s.refuseReadOnly(w, r, a, headerValue(r.Header, headerType))
		return
	}
	if r.ContentLength > s.maxBodyBytes {
		s.refuseTooLarge(w, r, a)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.maxBodyBytes)
	ev, err := s.decode(r)
	if err == nil {
		err = ev.Validate()
	}
	if err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			s.refuseTooLarge(w, r, a)
		case !a.admitted(): // nothing about the request is told to an unknown caller
			s.refuseUnauthenticated(w, r, a)
		default:
			writeError(w, http.StatusBadRequest, "invalid_argument", "not a valid CloudEvent: "+err.Error())
		}
		return
	}
	if !a.admitted() && !s.openTypes[ev.Type()] {
		s.refuseUnauthenticated(w, r, a)
		return
	}
	if a.caller.ReadOnly && WriteType(ev.Type()) {
		s.refuseReadOnly(w, r, a, ev.Type())
		return
	}
	// A slot is taken once the body has arrived: a client sending its body slowly holds a
	// connection (bounded by the server's read timeout), never one of MAX_INFLIGHT.
	if !s.acquire() {
		s.refuseBusy(w)
		return
	}
	defer s.release()
	req := &Request{Event: ev, Base: s.logger, vouched: a.cred == credentialValid,
		verified: a.cred == credentialVerified, caller: a.caller.Caller}
	h, ok := s.routes[ev.Type()]
	if !ok {
		writeError(w, http.StatusBadRequest, "invalid_argument",
			fmt.Sprintf("CloudEvent type %q is not handled here; this function handles %s",
				ev.Type(), strings.Join(s.Types(), ", ")))
		return
	}
	resp, err := h(r.Context(), req)
	if err != nil {
		code, name := HTTPStatus(err)
		msg := err.Error()
		if code == http.StatusInternalServerError {
			msg = "internal error"
		}
		if code >= 500 {
			req.Logger().Error("request failed", "status", code, "error", err.Error())
		} else {
			req.Logger().Info("request refused", "status", code, "error", err.Error())
		}
		if code == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		writeError(w, code, name, msg)
		return
	}
	if resp == nil { // a command with nothing to say: Knative's "accepted, no reply"
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if err := s.reply(w, ev, resp, strings.Contains(r.Header.Get("Accept"), ContentTypeProtobuf)); err != nil {
		req.Logger().Error("writing reply failed", "error", err.Error())
	}
}

// refuseTooLarge answers 413, or 401 to a caller without the credential.
func (s *Server) refuseTooLarge(w http.ResponseWriter, r *http.Request, a authn) {
	if !a.admitted() {
		s.refuseUnauthenticated(w, r, a)
		return
	}
	writeError(w, http.StatusRequestEntityTooLarge, "too_large",
		fmt.Sprintf("the request is larger than the limit of %d bytes (MAX_BODY_BYTES)", s.maxBodyBytes))
}

// decode reads a request event in either content mode.
func (s *Server) decode(r *http.Request) (*event.Event, error) {
	if !isBinary(r.Header) {
		return cehttp.NewEventFromHTTPRequest(r)
	}
	body, err := readBody(r.Body, r.ContentLength)
	if err != nil {
		return nil, err
	}
	return readBinary(r.Header, body)
}

// reply writes resp as a binary-mode reply event; its data is binary protobuf when the
// caller accepts it, protobuf JSON otherwise.
func (s *Server) reply(w http.ResponseWriter, req *event.Event, resp proto.Message, binary bool) error {
	data, ct, err := marshalData(resp, binary)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", "internal error")
		return fmt.Errorf("marshal reply: %w", err)
	}
	tp, _ := req.Extensions()[ExtTraceparent].(string)
	writeBinary(w.Header(), uuid.NewString(), s.source, ReplyType(resp), req.Subject(), tp, ct, nil)
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(data)
	return err
}

// ErrorBody is the JSON body of every non-2xx answer.
type ErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	countRefused(code)
	var body ErrorBody
	body.Error.Code = code
	body.Error.Message = msg
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// HTTPStatus is the functions' one mapping from error to HTTP status, following Knative
// delivery rules: 4xx for what a retry cannot fix (not retried), 5xx and 429 for what it can.
func HTTPStatus(err error) (int, string) {
	switch {
	case errors.Is(err, domain.ErrInvalid):
		return http.StatusBadRequest, "invalid_argument"
	case errors.Is(err, domain.ErrNotFound):
		return http.StatusNotFound, "not_found"
	case errors.Is(err, domain.ErrConflict), errors.Is(err, domain.ErrAlreadyExists):
		return http.StatusConflict, "conflict"
	case errors.Is(err, domain.ErrUnavailable):
		return http.StatusServiceUnavailable, "unavailable"
	case errors.Is(err, domain.ErrDeadline), errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, "deadline_exceeded"
	case errors.Is(err, domain.ErrUnauthenticated):
		// Ray refused this gateway's credentials: the gateway's fault, not the caller's. A
		// caller without the internal credential never gets here: the server refuses it
		// with 401 before any handler runs.
		return http.StatusBadGateway, "upstream_unauthenticated"
	case errors.Is(err, domain.ErrPermissionDenied):
		return http.StatusForbidden, "permission_denied"
	case errors.Is(err, domain.ErrResourceExhausted):
		return http.StatusTooManyRequests, "resource_exhausted"
	case errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, "cancelled"
	default:
		return http.StatusInternalServerError, "internal"
	}
}

// readBody reads a body whose length is usually announced, in one allocation.
func readBody(r io.Reader, length int64) ([]byte, error) {
	if length <= 0 || length > 1<<20 {
		return io.ReadAll(r)
	}
	buf := make([]byte, length)
	n, err := io.ReadFull(r, buf)
	if err == io.ErrUnexpectedEOF {
		return buf[:n], nil
	}
	if err != nil {
		return nil, err
	}
	// Anything beyond the announced length is an error the server already reports.
	return buf, nil
}
