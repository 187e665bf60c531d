package rexctl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
)

// maxProposalRunes is how much of the best proposal and reasoning status prints without --full.
const maxProposalRunes = 2000

// jsonOptions render a response as --output json does: protobuf JSON with the proto's own
// field names (as request files use them), re-spaced by encoding/json so that the output is
// stable (protojson varies its spacing on purpose).
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true}

// writeJSON is one message, indented.
func writeJSON(w io.Writer, m proto.Message) error {
	return writeJSONAs(w, m, true)
}

// writeJSONLine is one message on one line (watch's stream of events).
func writeJSONLine(w io.Writer, m proto.Message) error {
	return writeJSONAs(w, m, false)
}

func writeJSONAs(w io.Writer, m proto.Message, indent bool) error {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	if indent {
		err = json.Indent(&buf, b, "", "  ")
	} else {
		err = json.Compact(&buf, b)
	}
	if err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

func (a *App) printSubmit(resp *pb.ExecuteDeliberationResponse, quiet bool) error {
	switch {
	case a.output == outputJSON:
		return writeJSONLine(a.Stdout, resp)
	case quiet:
		_, err := fmt.Fprintln(a.Stdout, clean(resp.GetDeliberationId(), 512))
		return err
	}
	verb := "submitted"
	if resp.GetDuplicate() {
		verb = "already submitted with this idempotency key:"
	}
	_, err := fmt.Fprintf(a.Stdout, "%s deliberation %s (task %s)\n", verb, clean(resp.GetDeliberationId(), 512), clean(resp.GetTaskId(), 256))
	return err
}

func (a *App) printStatus(resp *pb.GetDeliberationStatusResponse, full bool) error {
	if a.output == outputJSON {
		return writeJSON(a.Stdout, resp)
	}
	w := tabwriter.NewWriter(a.Stdout, 0, 4, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%s\t%s\n", k, v)
		}
	}
	row("deliberation", clean(resp.GetDeliberationId(), 512))
	row("task", clean(resp.GetTaskId(), 256))
	row("status", clean(resp.GetStatus(), 32))
	if n := resp.GetTotalAgents(); n > 0 {
		agents := fmt.Sprint(n)
		if done := resp.GetCompletedAgents() + resp.GetFailedAgents(); done > 0 {
			agents += fmt.Sprintf(" (%d completed, %d failed)", resp.GetCompletedAgents(), resp.GetFailedAgents())
		}
		row("agents", agents)
	}
	row("started", stamp(resp.GetStartTime()))
	end := stamp(resp.GetEndTime())
	if end != "" && resp.GetStartTime() != nil {
		end += fmt.Sprintf(" (after %s)", resp.GetEndTime().AsTime().Sub(resp.GetStartTime().AsTime()).Round(100*time.Millisecond))
	}
	row("ended", end)
	row("error", clean(joinNonEmpty(": ", resp.GetErrorType(), resp.GetErrorMessage()), 1000))
	if err := w.Flush(); err != nil {
		return err
	}
	if len(resp.GetAgentResults()) > 0 {
		fmt.Fprintln(a.Stdout)
		w = tabwriter.NewWriter(a.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "AGENT\tROLE\tMODEL\tSTATUS\tSCORE\tTOKENS\tDURATION\tERROR")
		for _, r := range resp.GetAgentResults() {
			score := ""
			if r.GetStatus() == "completed" {
				score = fmt.Sprintf("%.2f", r.GetScore())
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", clean(r.GetAgentId(), 64), clean(r.GetRole(), 32), clean(r.GetModel(), 48),
				clean(r.GetStatus(), 16), score, r.GetTokens(), ms(r.GetDurationMs()), clean(joinNonEmpty(": ", r.GetErrorType(), r.GetError()), 120))
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if res := resp.GetResult(); res != nil && res.GetProposal() != "" {
		limit := maxProposalRunes
		if full {
			limit = -1
		}
		fmt.Fprintf(a.Stdout, "\nbest result: %s (score %.2f)\n%s\n", clean(res.GetAgentId(), 64), res.GetScore(), cleanText(res.GetProposal(), limit, true))
		if r := res.GetReasoning(); r != "" {
			fmt.Fprintf(a.Stdout, "\nreasoning:\n%s\n", cleanText(r, limit, true))
		}
	}
	return nil
}

func (a *App) printList(resp *pb.GetActiveJobsResponse) error {
	if a.output == outputJSON {
		return writeJSON(a.Stdout, resp)
	}
	if len(resp.GetJobs()) == 0 {
		_, err := fmt.Fprintln(a.Stdout, "no active deliberations")
		return err
	}
	jobs := append([]*pb.JobInfo(nil), resp.GetJobs()...)
	sort.SliceStable(jobs, func(i, j int) bool { return jobs[i].GetStartTime().AsTime().Before(jobs[j].GetStartTime().AsTime()) })
	w := tabwriter.NewWriter(a.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DELIBERATION\tSTATUS\tKIND\tTASK\tAGENTS\tAGE")
	now := a.Now()
	for _, j := range jobs {
		age := ""
		if j.GetStartTime() != nil {
			age = now.Sub(j.GetStartTime().AsTime()).Round(time.Second).String()
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", clean(j.GetJobId(), 128), clean(strings.ToLower(j.GetStatus()), 16),
			clean(j.GetKind(), 32), clean(j.GetTaskId(), 64), j.GetTotalAgents(), age)
	}
	return w.Flush()
}

func (a *App) printCancel(resp *pb.CancelDeliberationResponse) error {
	if a.output == outputJSON {
		return writeJSON(a.Stdout, resp)
	}
	line := fmt.Sprintf("deliberation %s: %s", clean(resp.GetDeliberationId(), 512), clean(resp.GetStatus(), 32))
	if m := resp.GetMessage(); m != "" {
		line += " (" + clean(m, 300) + ")"
	}
	_, err := fmt.Fprintln(a.Stdout, line)
	return err
}

func (a *App) printHealth(resp *pb.GetStatusResponse) error {
	if a.output == outputJSON {
		return writeJSON(a.Stdout, resp)
	}
	fmt.Fprintf(a.Stdout, "%s  version %s  up %s\n", clean(resp.GetStatus(), 32), clean(resp.GetVersion(), 64),
		(time.Duration(resp.GetUptimeSeconds()) * time.Second).String())
	w := tabwriter.NewWriter(a.Stdout, 0, 4, 2, ' ', 0)
	for _, c := range resp.GetComponents() {
		fmt.Fprintf(w, "  %s\t%s\t%s\n", clean(c.GetName(), 32), clean(c.GetStatus(), 32), clean(c.GetMessage(), 300))
	}
	if s := resp.GetStats(); s != nil {
		line := fmt.Sprintf("deliberations\ttotal %d\tpending %d  running %d  completed %d  failed %d  cancelled %d",
			s.GetTotalDeliberations(), s.GetPendingDeliberations(), s.GetActiveDeliberations(), s.GetCompletedDeliberations(),
			s.GetFailedDeliberations(), s.GetCancelledDeliberations())
		if mean := ms(int64(s.GetAverageExecutionTimeMs())); mean != "" {
			line += "  mean " + mean
		}
		fmt.Fprintln(w, line)
	}
	return w.Flush()
}

// stamp is a timestamp in UTC, RFC 3339, or empty.
func stamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}
