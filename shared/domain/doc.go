// Package domain holds the deliberation entities of ray-executor, their validation,
// identifiers and the sentinel errors every adapter maps to. It imports only the standard
// library so that every function and adapter can depend on it.
package domain
