// Package validate holds the tests of the Knative manifests in knative/: every document is
// decoded strictly into Knative's (or Kubernetes') own API types, defaulted and validated as
// the Knative webhooks would on create, and cross-checked against the Go source of the
// binaries (the environment variables they read, the event types they handle).
//
// It is a module of its own so that the Knative API types never enter the build of the
// binaries; it reads the main module's source as text (go/parser) instead of importing it.
// Run it with `cd knative/validate && go test ./...`.
package validate
