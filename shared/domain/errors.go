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
	// ErrUnauthenticated: a dependency refused our credentials (Ray 401/403).
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrDeadline: a call ran out of time. Retryable.
	ErrDeadline = errors.New("deadline exceeded")
)
