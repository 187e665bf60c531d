// Command funcframework serves execute, status or list through the Functions Framework
// for Go, for local work: FUNCTION_TARGET=<name> PORT=8081 go run ./functions/framework/cmd.
// It is the program Google's Go buildpack generates for a function (a blank import of the
// function package, whose init() composes and registers the function, then funcframework
// on $PORT), so running it runs what a Cloud Run functions build runs. Unlike the Knative
// binaries it does not drain: the framework has no shutdown, so SIGTERM or SIGINT ends it
// at once, requests in flight included.
package main

import (
	"context"
	"io"

	"github.com/GoogleCloudPlatform/functions-framework-go/funcframework"

	_ "github.com/fleet-ai/ray-executor" // registers the function FUNCTION_TARGET names
	"github.com/fleet-ai/ray-executor/shared/serving"
)

func main() { serving.Main("funcframework", run) }

// run serves the registered function on HOST:PORT (all interfaces, 8080 by default, as the
// buildpack's program does) until ctx is done or the server fails.
func run(ctx context.Context, getenv func(string) string, _ io.Writer) error {
	port := getenv("PORT")
	if port == "" {
		port = "8080"
	}
	errc := make(chan error, 1)
	go func() { errc <- funcframework.StartHostPort(getenv("HOST"), port) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return nil
	}
}
