// Command rexctl is a client of the ray-executor gRPC ingress for people and scripts
// (README "CLI").
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/fleet-ai/ray-executor/functions/rexctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := rexctl.Main(ctx, rexctl.DefaultApp(isTerminal), os.Args[1:])
	if code != rexctl.ExitOK && ctx.Err() != nil {
		code = rexctl.ExitInterrupted // a call cut short by Ctrl-C or SIGTERM
	}
	stop()
	os.Exit(code)
}

// isTerminal reports whether one of the process's streams is a terminal.
func isTerminal(v any) bool {
	f, ok := v.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
