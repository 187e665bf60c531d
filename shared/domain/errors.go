package domain

import "errors"

// Sentinel errors. Adapters wrap them with context (fmt.Errorf("ray: get job %s: %w", id, err));
// transports map them to status codes with errors.Is, in exactly one place each.
var (
	// ErrInvalid: the request is malformed or breaks a rule. Not retryable.
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound: the named deliberation (or Ray job) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: something with that identity exists already.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict: an idempotency key was reused for a different request.
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: a dependency (Ray, NATS) could not be reached or refused for now.
	// Retryable.
	ErrUnavailable = errors.New("unavailable")
	// ErrUnauthenticated: a credential is missing or wrong: a dependency refused ours (Ray
	// 401/403), or a caller presented none or a bad one.
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrDeadline: a call ran out of time. Retryable.
	ErrDeadline = errors.New("deadline exceeded")
	// ErrResourceExhausted: the caller (or this replica) is over a concurrency or rate
	// limit. Retryable after a pause; gRPC RESOURCE_EXHAUSTED, HTTP 429.
	ErrResourceExhausted = errors.New("resource exhausted")
	// ErrPermissionDenied: the caller's credential is valid but does not allow what it
	// asked. Not retryable.
	ErrPermissionDenied = errors.New("permission denied")
)
