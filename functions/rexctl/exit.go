package rexctl

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes scripts can rely on (README "CLI").
const (
	ExitOK          = 0   // the command did what was asked (watch, submit --wait: the deliberation completed)
	ExitOther       = 1   // anything not below: INTERNAL, UNKNOWN, UNIMPLEMENTED, a local I/O error
	ExitUsage       = 2   // a bad command line or request file, or a request the ingress refused as invalid
	ExitNotFound    = 3   // no such deliberation (NOT_FOUND, status "not_found")
	ExitFailed      = 4   // the deliberation ended failed
	ExitCancelled   = 5   // the deliberation ended cancelled
	ExitDenied      = 6   // UNAUTHENTICATED or PERMISSION_DENIED
	ExitUnavailable = 7   // retry later: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED; health not healthy
	ExitInterrupted = 130 // stopped by Ctrl-C
)

// usageError is a mistake in the command line or the request file: exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{msg: fmt.Sprintf(format, args...)} }

// endedError reports a deliberation that ended other than completed (watch, submit --wait).
type endedError struct {
	id, status, detail string
}

func (e *endedError) Error() string {
	msg := fmt.Sprintf("deliberation %s ended %s", e.id, e.status)
	if e.detail != "" {
		msg += ": " + e.detail
	}
	return msg
}

// notFoundError is a status answer of "not_found" (the RPC itself answers OK).
type notFoundError struct{ id string }

func (e *notFoundError) Error() string { return fmt.Sprintf("deliberation %s not found", e.id) }

// errInterrupted is returned when the person pressed Ctrl-C (or q) during a watch.
var errInterrupted = errors.New("interrupted")

// unhealthyError is `health` of a gateway that is not healthy.
type unhealthyError struct{ status string }

func (e *unhealthyError) Error() string { return "the gateway is " + e.status }

// ExitCode maps an error from a command to the process's exit code.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var (
		ue *usageError
		ee *endedError
		nf *notFoundError
		uh *unhealthyError
	)
	switch {
	case errors.As(err, &ue):
		return ExitUsage
	case errors.As(err, &ee):
		if ee.status == "cancelled" {
			return ExitCancelled
		}
		return ExitFailed
	case errors.As(err, &nf):
		return ExitNotFound
	case errors.As(err, &uh):
		return ExitUnavailable
	case errors.Is(err, errInterrupted):
		return ExitInterrupted
	case errors.Is(err, context.DeadlineExceeded):
		return ExitUnavailable
	}
	st, ok := status.FromError(err)
	if !ok {
		return ExitOther
	}
	return codeExit(st.Code())
}

// codeExit is the exit code of a gRPC status code.
func codeExit(c codes.Code) int {
	switch c {
	case codes.OK:
		return ExitOK
	case codes.InvalidArgument, codes.OutOfRange, codes.AlreadyExists:
		return ExitUsage
	case codes.NotFound:
		return ExitNotFound
	case codes.Unauthenticated, codes.PermissionDenied:
		return ExitDenied
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
		return ExitUnavailable
	case codes.Canceled:
		return ExitInterrupted
	default:
		return ExitOther
	}
}
