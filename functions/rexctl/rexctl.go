// Package rexctl is a command-line client of the ingress for people (and scripts): submit a
// deliberation, watch it with live per-agent progress, read its status, list the active
// ones, cancel one, check the gateway's health. README "CLI" is its guide.
package rexctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
)

// Output formats.
const (
	outputText = "text"
	outputJSON = "json"
)

// App is one run of the CLI: its streams, environment and terminal.
type App struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// IsTerminal reports whether a stream is a terminal (golang.org/x/term in main).
	IsTerminal func(any) bool
	Now        func() time.Time

	conn        connOptions
	output      string
	waitTimeout time.Duration
	plain       bool
	token       secret // the resolved token, to redact from any message
}

// Main runs the CLI with args and returns the process's exit code.
func Main(ctx context.Context, a *App, args []string) int {
	if a.Now == nil {
		a.Now = time.Now
	}
	if a.IsTerminal == nil {
		a.IsTerminal = func(any) bool { return false }
	}
	root := a.command()
	root.SetArgs(args)
	root.SetIn(a.Stdin)
	root.SetOut(a.Stdout)
	root.SetErr(a.Stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	if !isFlagError(err) {
		fmt.Fprintln(a.Stderr, "rexctl: "+a.redact(describe(err)))
	}
	return ExitCode(err)
}

// isFlagError: cobra already printed the error and the usage line.
func isFlagError(err error) bool {
	var fe *flagError
	return errors.As(err, &fe)
}

type flagError struct{ err error }

func (e *flagError) Error() string { return e.err.Error() }
func (e *flagError) Unwrap() error { return &usageError{msg: e.err.Error()} }

// describe renders an error for the person: a gRPC status as "CODE: message".
func describe(err error) string {
	if st, ok := status.FromError(err); ok && status.Code(err) != 0 {
		return fmt.Sprintf("%s: %s", strings.ToUpper(snake(st.Code().String())), clean(st.Message(), 1000))
	}
	return clean(err.Error(), 1000)
}

// snake turns "NotFound" into "not_found".
func snake(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToLower(b.String())
}

// redact removes the token from a message, should anything ever quote it.
func (a *App) redact(s string) string {
	if a.token != "" {
		s = strings.ReplaceAll(s, string(a.token), "[redacted]")
	}
	return s
}

func (a *App) command() *cobra.Command {
	root := &cobra.Command{
		Use:   "rexctl",
		Short: "A client of the ray-executor gRPC ingress",
		Long: `rexctl submits deliberations to the ray-executor ingress, follows them live, reads their
status, lists the active ones and cancels them.

The address is --address, else $REX_ADDRESS, else ` + DefaultAddress + ` (make run).
The bearer token is --token-file, --token, $REX_TOKEN_FILE or $REX_TOKEN; prefer a file:
a --token on the command line is visible to other users of the machine.

Exit codes: 0 ok; 1 other error; 2 usage error or a request the ingress refused as invalid;
3 not found; 4 the deliberation ended failed; 5 it ended cancelled; 6 unauthenticated or
permission denied; 7 unavailable, retry later (also health not healthy); 130 interrupted.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if a.output != outputText && a.output != outputJSON {
				return usagef("--output %q: want text or json", a.output)
			}
			if a.conn.timeout <= 0 {
				return usagef("--timeout must be positive")
			}
			return nil
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		fmt.Fprintf(cmd.ErrOrStderr(), "rexctl: %s\n%s", err, cmd.UsageString())
		return &flagError{err: err}
	})
	pf := root.PersistentFlags()
	pf.StringVar(&a.conn.address, "address", "", "the ingress, host:port (default $"+EnvAddress+" or "+DefaultAddress+")")
	pf.StringVar(&a.conn.token, "token", "", "bearer token (visible in the process list: prefer --token-file or $"+EnvTokenFile+")")
	pf.StringVar(&a.conn.tokenFile, "token-file", "", "file holding the bearer token (default $"+EnvTokenFile+")")
	pf.BoolVar(&a.conn.tls, "tls", false, "connect with TLS (implied by the options below)")
	pf.StringVar(&a.conn.caFile, "ca-file", "", "PEM CA certificates to verify the ingress with (default $"+EnvCAFile+", else the system's)")
	pf.StringVar(&a.conn.serverName, "server-name", "", "the name to verify the ingress's certificate against")
	pf.StringVar(&a.conn.certFile, "cert-file", "", "PEM client certificate for mutual TLS (default $"+EnvCertFile+")")
	pf.StringVar(&a.conn.keyFile, "key-file", "", "PEM key of --cert-file (default $"+EnvKeyFile+")")
	pf.BoolVar(&a.conn.insecureSkipVerify, "insecure-skip-verify", false, "TLS without verifying the ingress's certificate (testing only)")
	pf.DurationVar(&a.conn.timeout, "timeout", 30*time.Second, "deadline of each call (watch's stream: see --wait-timeout)")
	pf.StringVarP(&a.output, "output", "o", outputText, "text or json (protobuf JSON; watch: one event per line)")
	root.AddCommand(a.submitCommand(), a.watchCommand(), a.statusCommand(), a.listCommand(), a.cancelCommand(), a.healthCommand())
	return root
}

// client dials the ingress; the returned close must be called.
func (a *App) client() (pb.RayExecutorServiceClient, func(), error) {
	tok, err := a.conn.resolveToken(a.Getenv)
	if err != nil {
		return nil, nil, err
	}
	a.token = tok
	return a.conn.dial(a.Getenv, a.Stderr, tok)
}

// unary bounds one call by --timeout.
func (a *App) unary(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.conn.timeout)
}

// unaryCall dials the ingress and makes one call, bounded by --timeout.
func unaryCall[T any](a *App, ctx context.Context, call func(context.Context, pb.RayExecutorServiceClient) (T, error)) (T, error) {
	c, closeConn, err := a.client()
	if err != nil {
		var zero T
		return zero, err
	}
	defer closeConn()
	ctx, cancel := a.unary(ctx)
	defer cancel()
	return call(ctx, c)
}

func (a *App) submitCommand() *cobra.Command {
	var o submitOptions
	cmd := &cobra.Command{
		Use:   "submit",
		Short: "Submit a deliberation (flags or a JSON/YAML request file)",
		Example: `  rexctl submit --task-id t1 -d "Pick a database for the audit log" --role architect \
      --vllm-url http://127.0.0.1:8000 --model m --agents 3 --idempotency-key t1-try1 --wait
  rexctl submit -f request.yaml --agent id=a1,model=m1 --agent id=a2,model=m2
  id=$(rexctl submit -q -f request.json)`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := o.buildRequest(cmd.Flags(), a.Stdin)
			if err != nil {
				return err
			}
			if o.wait && a.output == outputJSON && o.quiet {
				return usagef("--quiet and --output json do not go together")
			}
			c, closeConn, err := a.client()
			if err != nil {
				return err
			}
			defer closeConn()
			ctx := cmd.Context()
			if o.idempotencyKey != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "idempotency-key", o.idempotencyKey)
			}
			cctx, cancel := a.unary(ctx)
			defer cancel()
			var resp *pb.ExecuteDeliberationResponse
			if o.kind == kindBacklogReview {
				resp, err = c.ExecuteBacklogReviewDeliberation(cctx, backlogReview(req))
			} else {
				resp, err = c.ExecuteDeliberation(cctx, req)
			}
			if err != nil {
				return err
			}
			if err := a.printSubmit(resp, o.quiet); err != nil {
				return err
			}
			if !o.wait {
				return nil
			}
			return a.watch(cmd.Context(), c, resp.GetDeliberationId(), req.GetAgents())
		},
	}
	o.register(cmd.Flags())
	a.registerWatchFlags(cmd)
	return cmd
}

func (a *App) registerWatchFlags(cmd *cobra.Command) {
	cmd.Flags().DurationVar(&a.waitTimeout, "wait-timeout", 0, "give up watching after this long (0: until the deliberation ends); exit code 7")
	cmd.Flags().BoolVar(&a.plain, "plain", false, "plain event lines even on a terminal")
}

func (a *App) watchCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "watch DELIBERATION_ID",
		Short: "Follow a deliberation until it ends: live per-agent progress on a terminal, event lines otherwise",
		Long: `Follow a deliberation from its first event until it ends. On a terminal: a live display of
its agents (pending, running, done, failed) and the time elapsed; q or Ctrl-C stops watching
(the deliberation goes on). Otherwise, or with --plain: one line per event. With --output
json: one LifecycleEvent per line.

Exit code 0 when it completed, 4 when it failed, 5 when it was cancelled.`,
		Args: exactlyOneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, closeConn, err := a.client()
			if err != nil {
				return err
			}
			defer closeConn()
			return a.watch(cmd.Context(), c, args[0], nil)
		},
	}
	a.registerWatchFlags(cmd)
	return cmd
}

func (a *App) statusCommand() *cobra.Command {
	var full bool
	cmd := &cobra.Command{
		Use:   "status DELIBERATION_ID",
		Short: "A deliberation's status and, once it ended, every agent's result (exit 3 if not found)",
		Args:  exactlyOneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := unaryCall(a, cmd.Context(), func(ctx context.Context, c pb.RayExecutorServiceClient) (*pb.GetDeliberationStatusResponse, error) {
				return c.GetDeliberationStatus(ctx, &pb.GetDeliberationStatusRequest{DeliberationId: args[0]})
			})
			if err != nil {
				return err
			}
			if err := a.printStatus(resp, full); err != nil {
				return err
			}
			if resp.GetStatus() == "not_found" {
				return &notFoundError{id: clean(args[0], 128)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&full, "full", false, "print the best proposal and reasoning whole (text output cuts them at 2000 characters)")
	return cmd
}

func (a *App) listCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "The deliberations pending or running (yours, or all for an admin)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := unaryCall(a, cmd.Context(), func(ctx context.Context, c pb.RayExecutorServiceClient) (*pb.GetActiveJobsResponse, error) {
				return c.GetActiveJobs(ctx, &pb.GetActiveJobsRequest{})
			})
			if err != nil {
				return err
			}
			return a.printList(resp)
		},
	}
}

func (a *App) cancelCommand() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "cancel DELIBERATION_ID",
		Short: "Cancel a deliberation (a finished one reports its status)",
		Args:  exactlyOneID,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(reason) > 1024 {
				return usagef("--reason is longer than 1024 bytes")
			}
			resp, err := unaryCall(a, cmd.Context(), func(ctx context.Context, c pb.RayExecutorServiceClient) (*pb.CancelDeliberationResponse, error) {
				return c.CancelDeliberation(ctx, &pb.CancelDeliberationRequest{DeliberationId: args[0], Reason: reason})
			})
			if err != nil {
				return err
			}
			return a.printCancel(resp)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept with the cancellation)")
	return cmd
}

func (a *App) healthCommand() *cobra.Command {
	var stats bool
	cmd := &cobra.Command{
		Use:   "health",
		Short: "The gateway's health and statistics (GetStatus); exit 7 unless healthy",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := unaryCall(a, cmd.Context(), func(ctx context.Context, c pb.RayExecutorServiceClient) (*pb.GetStatusResponse, error) {
				return c.GetStatus(ctx, &pb.GetStatusRequest{IncludeStats: stats})
			})
			if err != nil {
				return err
			}
			if err := a.printHealth(resp); err != nil {
				return err
			}
			if resp.GetStatus() != "healthy" {
				return &unhealthyError{status: clean(resp.GetStatus(), 32)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&stats, "stats", true, "include statistics")
	return cmd
}

func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", clip(args[0], 64))
	}
	return nil
}

func exactlyOneID(_ *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usagef("want exactly one deliberation id, got %d arguments", len(args))
	}
	if args[0] == "" || len(args[0]) > 512 {
		return usagef("a deliberation id has 1 to 512 bytes")
	}
	return nil
}

// watch follows deliberation id to its end on the display the output calls for.
func (a *App) watch(ctx context.Context, c pb.RayExecutorServiceClient, id string, known []*pb.Agent) error {
	if a.waitTimeout < 0 {
		return usagef("--wait-timeout must not be negative")
	}
	if a.waitTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.waitTimeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.WatchDeliberation(ctx, &pb.WatchDeliberationRequest{DeliberationId: id})
	if err != nil {
		return err
	}
	// The first event, or the refusal (NOT_FOUND, a credential), comes before any display.
	first, err := stream.Recv()
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	p := newProgress(id, known)
	events := func(fn func(*pb.LifecycleEvent) error) error {
		if first.GetEvent() != nil {
			if err := fn(first.GetEvent()); err != nil {
				return err
			}
		}
		if first == nil {
			return nil // the stream had already ended
		}
		return receive(stream, fn)
	}
	switch {
	case a.output == outputJSON:
		err = events(func(ev *pb.LifecycleEvent) error {
			p.apply(ev)
			return writeJSONLine(a.Stdout, ev)
		})
	case !a.plain && a.IsTerminal(a.Stdout):
		err = a.watchLive(ctx, cancel, events, p)
	default:
		err = events(func(ev *pb.LifecycleEvent) error {
			_, werr := fmt.Fprintln(a.Stdout, plainLine(ev, p.apply(ev)))
			return werr
		})
	}
	if err != nil {
		return err
	}
	if p.outcome == "" {
		return status.Error(codes.Unavailable, "the watch ended before the deliberation did: watch it again")
	}
	return p.result()
}

// receive reads the stream to its end, handing each event to fn. A deadline of
// --wait-timeout ends it as DEADLINE_EXCEEDED.
func receive(stream grpc.ServerStreamingClient[pb.WatchDeliberationResponse], fn func(*pb.LifecycleEvent) error) error {
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if msg.GetEvent() == nil {
			continue
		}
		if err := fn(msg.GetEvent()); err != nil {
			return err
		}
	}
}

// watchLive runs the bubbletea display while a goroutine feeds it the stream.
func (a *App) watchLive(ctx context.Context, cancel context.CancelFunc, events func(func(*pb.LifecycleEvent) error) error, p *progress) error {
	m := &watchModel{p: p, st: newStyles(liveRenderer(a.Stdout, a.Getenv)), now: a.Now}
	var input io.Reader
	if a.IsTerminal(a.Stdin) {
		input = a.Stdin
	}
	prog := newLiveProgram(m, input, a.Stdout)
	go func() {
		err := events(func(ev *pb.LifecycleEvent) error {
			prog.Send(eventMsg{ev: ev})
			return nil
		})
		prog.Send(streamEndMsg{err: err})
	}()
	_, runErr := prog.Run()
	cancel() // stops the receiving goroutine when the person quit first
	switch {
	case m.interrupted || errors.Is(runErr, tea.ErrInterrupted):
		return errInterrupted
	case runErr != nil && ctx.Err() == nil:
		return fmt.Errorf("the display: %w", runErr)
	case m.err != nil:
		return m.err
	}
	return nil
}

// DefaultApp is the CLI on this process's streams and environment.
func DefaultApp(isTerminal func(any) bool) *App {
	return &App{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, IsTerminal: isTerminal}
}
