// Package rayexecutor is the module's Functions Framework entry point: execute, status and
// list as functions-framework-go HTTP functions, for `funcframework` locally
// (functions/framework/cmd) and for a source build with Google's Go buildpacks
// (GOOGLE_FUNCTION_TARGET=execute|status|list), as on Cloud Run functions.
//
// It sits at the module root and registers in init() because that is the only place
// Google's Go functions buildpack looks: it parses the package at the root of the source it
// is given (it does not honour GOOGLE_FUNCTION_SOURCE for Go), and when that package
// imports functions-framework-go's functions package it generates a main that only
// blank-imports it and calls funcframework.Start, so registration has to happen in init().
// This is the one init() of the project (STYLE: registration belongs in run); it stays as
// thin as that allows. Keep this directory free of other Go packages and test files: the
// buildpack refuses a root directory with two package names.
//
// Each function is composed exactly as its Knative binary composes it (execute.Compose,
// status.Compose, list.Compose) and registered with its probes (serving.Probes), so the
// same handler answers both ways. The Knative images never link this package or
// functions-framework-go (functions/framework's tests check it): FF-Go's quirks (a blank
// line on stdout and stderr after every request when K_SERVICE is set, no drain on SIGTERM,
// HTTP/1.1 only) stay on this path.
package rayexecutor

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/GoogleCloudPlatform/functions-framework-go/functions"

	"github.com/fleet-ai/ray-executor/functions/execute"
	"github.com/fleet-ai/ray-executor/functions/list"
	"github.com/fleet-ai/ray-executor/functions/status"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

// composers are the functions by the name FUNCTION_TARGET gives them.
var composers = []struct {
	name    string
	compose func(context.Context, func(string) string, io.Writer) (*serving.Function, error)
}{
	{"execute", execute.Compose},
	{"status", status.Compose},
	{"list", list.Compose},
}

// init composes the function FUNCTION_TARGET names (all three, served at /execute, /status
// and /list, when it is unset) from the process environment and registers it. A bad
// configuration stops the process at start, as it stops the Knative binary; an unknown
// FUNCTION_TARGET is left to funcframework, which refuses to start and says so.
func init() {
	target := os.Getenv("FUNCTION_TARGET")
	for _, c := range composers {
		if target != "" && target != c.name {
			continue
		}
		// Background work runs for the life of the process: the Functions Framework has
		// no shutdown to stop it.
		f, err := c.compose(context.Background(), os.Getenv, os.Stdout)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", c.name, err)
			os.Exit(1)
		}
		functions.HTTP(c.name, serving.Probes(f.Handler, f.Ready).ServeHTTP)
	}
}
