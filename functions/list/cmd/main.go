// Command list serves the list function: it lists this system's active deliberations.
package main

import (
	"context"
	"io"

	"github.com/fleet-ai/ray-executor/functions/list"
	"github.com/fleet-ai/ray-executor/shared/serving"
)

func main() { serving.Main("list", run) }

// run composes the function (the handler the Functions Framework registration serves too)
// and serves it through shared/serving until ctx is done.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	f, err := list.Compose(ctx, getenv, stdout)
	if err != nil {
		return err
	}
	defer f.Close()
	return serving.Run(ctx, f.Serving, f.Handler, f.Logger, serving.Options{Ready: f.Ready})
}
