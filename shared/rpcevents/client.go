package rpcevents

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// Client sends request events to a function and decodes its reply event.
type Client struct {
	HTTP   *http.Client
	Source string // the sender's URI reference, e.g. "ray-executor/ingress"
	// Protobuf sends binary protobuf data and asks for it back (the ingress does: protojson
	// was a tenth of the chain's CPU). Otherwise data is protobuf JSON.
	Protobuf bool
	// Token, when set, is sent as "Authorization: Bearer <Token>" on every call: the
	// functions' internal credential (INTERNAL_TOKEN). Never logged.
	Token string
}

// CallOptions are the attributes of one request event.
type CallOptions struct {
	// ID of the event; a random one when empty. A caller that retries reuses it.
	ID             string
	Subject        string
	IdempotencyKey string
	Traceparent    string
	// Caller is who the request is from (ExtCaller, ExtCallerRole); zero sends neither.
	Caller domain.Caller
}

// Call posts req as a binary-mode CloudEvent of type ceType to url and decodes the reply
// event's data into resp. Errors wrap the domain sentinels: the function's 400/413 ->
// ErrInvalid, 401 -> ErrUnauthenticated (the function refused c.Token: for the caller's
// caller a deployment fault), 403 -> ErrPermissionDenied, 404 -> ErrNotFound, 409 ->
// ErrConflict, 429 -> ErrResourceExhausted, 502, 503 (and other 5xx but 500) and an
// unreachable function -> ErrUnavailable (a 502 means Ray refused the gateway's own
// credentials: for the caller the service is unavailable), 504 or an expired ctx ->
// ErrDeadline. A 500 wraps no sentinel: it is the unrecognised, *StatusError carries it. A
// reply over 64 MiB is an error.
func (c *Client) Call(ctx context.Context, url, ceType string, req proto.Message, opts CallOptions, resp proto.Message) error {
	data, ct, err := marshalData(req, c.Protobuf)
	if err != nil {
		return fmt.Errorf("rpcevents: marshal %s: %w", ceType, err)
	}
	if opts.ID == "" {
		opts.ID = uuid.NewString()
	}
	httpReq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("rpcevents: %s: %w", url, err)
	}
	var ext map[string]string
	if opts.IdempotencyKey != "" || opts.Caller.Name != "" {
		ext = make(map[string]string, 3)
	}
	if opts.IdempotencyKey != "" {
		ext[ExtIdempotencyKey] = opts.IdempotencyKey
	}
	if opts.Caller.Name != "" {
		ext[ExtCaller] = opts.Caller.Name
		if opts.Caller.Admin {
			ext[ExtCallerRole] = "admin"
		}
	}
	writeBinary(httpReq.Header, opts.ID, c.Source, ceType, opts.Subject, opts.Traceparent, ct, ext)
	if c.Protobuf {
		httpReq.Header.Set("Accept", ContentTypeProtobuf)
	}
	if c.Token != "" {
		httpReq.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	httpResp, err := hc.Do(httpReq)
	if err != nil {
		return transportError(ctx, url, err)
	}
	defer httpResp.Body.Close()
	if httpResp.StatusCode == http.StatusAccepted {
		return nil // a command with no reply: resp is left as it is
	}
	if httpResp.StatusCode != http.StatusOK {
		return statusError(httpResp)
	}
	reply, err := decodeReply(httpResp)
	if err != nil {
		return fmt.Errorf("rpcevents: reply from %s is not a CloudEvent: %w", url, err)
	}
	if want := ReplyType(resp); reply.Type() != want {
		return fmt.Errorf("rpcevents: reply type %q, want %q", reply.Type(), want)
	}
	if err := unmarshalData(reply.DataContentType(), reply.Data(), resp); err != nil {
		return fmt.Errorf("rpcevents: reply data: %w", err)
	}
	return nil
}

func transportError(ctx context.Context, url string, err error) error {
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("rpcevents: %s: %w", url, domain.ErrDeadline)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("rpcevents: %s: %w", url, ctx.Err())
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return fmt.Errorf("rpcevents: %s: %v: %w", url, err, domain.ErrDeadline)
	}
	return fmt.Errorf("rpcevents: %s unreachable: %v: %w", url, err, domain.ErrUnavailable)
}

// StatusError is a function's non-2xx answer; it wraps the matching domain sentinel.
type StatusError struct {
	HTTPStatus int
	Code       string
	Message    string
}

func (e *StatusError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("function answered %d", e.HTTPStatus)
	}
	return e.Message
}

// Unwrap gives the domain sentinel of the HTTP status (nil for 500 and the unrecognised).
func (e *StatusError) Unwrap() error {
	switch {
	case e.HTTPStatus == http.StatusBadRequest, e.HTTPStatus == http.StatusRequestEntityTooLarge:
		return domain.ErrInvalid
	case e.HTTPStatus == http.StatusNotFound:
		return domain.ErrNotFound
	case e.HTTPStatus == http.StatusConflict:
		return domain.ErrConflict
	case e.HTTPStatus == http.StatusGatewayTimeout:
		return domain.ErrDeadline
	case e.HTTPStatus == http.StatusUnauthorized:
		return domain.ErrUnauthenticated
	case e.HTTPStatus == http.StatusForbidden:
		return domain.ErrPermissionDenied
	case e.HTTPStatus == http.StatusTooManyRequests:
		return domain.ErrResourceExhausted
	case e.HTTPStatus >= 500 && e.HTTPStatus != http.StatusInternalServerError:
		return domain.ErrUnavailable
	}
	return nil
}

func statusError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &StatusError{HTTPStatus: resp.StatusCode}
	var eb ErrorBody
	if json.Unmarshal(body, &eb) == nil && eb.Error.Message != "" {
		e.Code, e.Message = eb.Error.Code, eb.Error.Message
	} else {
		e.Message = fmt.Sprintf("function answered %s", resp.Status)
	}
	return e
}

// decodeReply reads a reply event in either content mode, refusing one over maxReplyBytes
// rather than reading without bound (or cutting it short and misreading it).
func decodeReply(resp *http.Response) (*event.Event, error) {
	if resp.ContentLength > maxReplyBytes {
		return nil, fmt.Errorf("reply of %d bytes is over the %d-byte limit", resp.ContentLength, maxReplyBytes)
	}
	resp.Body = &limitedBody{ReadCloser: resp.Body, left: maxReplyBytes}
	if !isBinary(resp.Header) {
		return cehttp.NewEventFromHTTPResponse(resp)
	}
	body, err := readBody(resp.Body, resp.ContentLength)
	if err != nil {
		return nil, err
	}
	return readBinary(resp.Header, body)
}

// maxReplyBytes bounds a reply (GetActiveJobs of a busy cluster is the largest).
const maxReplyBytes = 64 << 20

// errReplyTooLarge ends the reading of a reply over maxReplyBytes.
var errReplyTooLarge = fmt.Errorf("reply is over the %d-byte limit", maxReplyBytes)

// limitedBody is io.LimitReader that fails past the limit instead of ending quietly.
type limitedBody struct {
	io.ReadCloser
	left int64
}

func (l *limitedBody) Read(p []byte) (int, error) {
	// Reading up to one byte past the limit tells a reply of exactly the limit from a longer one.
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.ReadCloser.Read(p)
	if int64(n) > l.left {
		return 0, errReplyTooLarge
	}
	l.left -= int64(n)
	return n, err
}
