// Package e2e runs the function binaries as real processes against a real Ray head and a
// real NATS JetStream server, with the LLM stand-in (the one dependency that cannot run
// here) in the test process. Every test file carries the build tag e2e, so `go test ./...`
// needs no Ray:
//
//	go test -tags e2e ./e2e/                  # against the Ray head at RAY_ADDRESS
//	go test -tags 'e2e exclusive' -run ... ./e2e/ # tests that need the head to themselves
//	go test -tags 'e2e bench' -run ... ./e2e/     # the reports `make bench` prints
//
// `make test` (scripts/test.sh) starts a local head and runs all three phases in turn.
package e2e
