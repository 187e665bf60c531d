package ray

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// What a caller of a token-protected dashboard is told, at once, instead of a timeout: the
// Ray head answers 401 when no token was sent and 403 when the token is not its own.
const (
	MsgTokenRequired = "the Ray dashboard requires a token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE"
	MsgTokenRefused  = "the Ray dashboard refused the token: RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE is wrong for this cluster"
)

// maxMessage caps how much of a Ray response body goes into an error message.
const maxMessage = 512

// classify turns the outcome of one call into an error wrapping a domain sentinel. It is
// the only place that decides the mapping; every Client method goes through it.
//
// ctx is the per-call context (the caller's context plus our timeout). When err is non-nil
// the call failed before a usable response (dial, TLS, write, read); otherwise status and
// body describe a response whose status the caller did not accept.
//
//   - the call's context ended by a deadline (our Config.Timeout or the caller's deadline),
//     or a network timeout                          -> domain.ErrDeadline (and context.DeadlineExceeded)
//   - the caller cancelled                          -> context.Canceled
//   - any other transport failure (refused, DNS, reset) -> domain.ErrUnavailable
//   - 400 and other 4xx not listed here             -> domain.ErrInvalid
//   - 401, 403                                      -> domain.ErrUnauthenticated, with a
//     message that says what to set (401: no token sent; 403: the token is wrong)
//   - 404                                           -> domain.ErrNotFound
//   - 408                                           -> domain.ErrDeadline
//   - 409, or 500 whose body says "already exists"  -> domain.ErrAlreadyExists
//     (Ray reports a duplicate submission_id as a 500)
//   - 429, other 5xx, and unexpected 1xx-3xx        -> domain.ErrUnavailable
//
// The message carries the operation, the HTTP status and a summary of Ray's body.
func classify(ctx context.Context, op string, status int, body []byte, err error) error {
	if err != nil {
		if ctx.Err() != nil {
			return contextError(ctx, op)
		}
		if isTimeout(err) {
			return fmt.Errorf("ray: %s: %w: %w", op, domain.ErrDeadline, err)
		}
		return fmt.Errorf("ray: %s: %w: %w", op, domain.ErrUnavailable, err)
	}

	var sentinel error
	switch {
	case status == http.StatusBadRequest:
		sentinel = domain.ErrInvalid
	case status == http.StatusUnauthorized, status == http.StatusForbidden:
		sentinel = domain.ErrUnauthenticated
	case status == http.StatusNotFound:
		sentinel = domain.ErrNotFound
	case status == http.StatusRequestTimeout:
		sentinel = domain.ErrDeadline
	case status == http.StatusConflict,
		status == http.StatusInternalServerError && bytes.Contains(body, []byte("already exists")):
		sentinel = domain.ErrAlreadyExists
	case status == http.StatusTooManyRequests, status >= 500:
		sentinel = domain.ErrUnavailable
	case status >= 400:
		sentinel = domain.ErrInvalid
	default:
		sentinel = domain.ErrUnavailable
	}
	msg := fmt.Sprintf("HTTP %d", status)
	switch status {
	case http.StatusUnauthorized:
		msg = MsgTokenRequired + ": " + msg
	case http.StatusForbidden:
		msg = MsgTokenRefused + ": " + msg
	}
	if s := summarize(body); s != "" {
		msg += ": " + s
	}
	return fmt.Errorf("ray: %s: %w: %s", op, sentinel, msg)
}

// contextError reports why ctx (a per-call context) ended: a deadline wraps
// domain.ErrDeadline and context.DeadlineExceeded, a cancellation wraps context.Canceled.
// The message says whether our per-call timeout or the caller's context fired.
func contextError(ctx context.Context, op string) error {
	cause := context.Cause(ctx)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		if errors.Is(cause, errCallTimeout) {
			return fmt.Errorf("ray: %s: %w (%v): %w", op, domain.ErrDeadline, cause, context.DeadlineExceeded)
		}
		return fmt.Errorf("ray: %s: %w (caller's deadline): %w", op, domain.ErrDeadline, context.DeadlineExceeded)
	}
	if cause == nil || errors.Is(cause, context.Canceled) {
		return fmt.Errorf("ray: %s: %w", op, context.Canceled)
	}
	return fmt.Errorf("ray: %s: %w (%v)", op, context.Canceled, cause)
}

// summarize makes a one-line excerpt of a Ray response body for an error message. Ray
// answers most failures with a Python traceback whose useful part is the final exception
// line, so for a traceback only that line is kept. Whitespace is collapsed and the result
// capped at maxMessage bytes.
func summarize(body []byte) string {
	s := strings.TrimSpace(strings.ToValidUTF8(string(body), "\uFFFD"))
	if strings.Contains(s, "Traceback (most recent call last):") {
		if line := lastExceptionLine(s); line != "" {
			s = line
		}
	}
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxMessage {
		cut := maxMessage
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// lastExceptionLine returns the last line of a Python traceback that names an exception:
// the last non-indented line that is not traceback scaffolding.
func lastExceptionLine(tb string) string {
	lines := strings.Split(tb, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimRight(lines[i], " \t\r")
		switch {
		case l == "", l == ".", l[0] == ' ', l[0] == '\t',
			strings.HasPrefix(l, "Traceback (most recent call last)"),
			strings.HasPrefix(l, "During handling of the above exception"),
			strings.HasPrefix(l, "The above exception was the direct cause"):
			continue
		}
		return l
	}
	return ""
}
