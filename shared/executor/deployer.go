package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/ray"
	"github.com/fleet-ai/ray-executor/shared/records"
)

// Jobs is the part of the Ray Jobs REST client the deployer needs.
type Jobs interface {
	Submit(ctx context.Context, req ray.SubmitRequest) (string, error)
	Job(ctx context.Context, id string) (ray.JobDetails, error)
	Stop(ctx context.Context, id string) (bool, error)
	Delete(ctx context.Context, id string) error
}

// WorkingDirs yields the payload package's URI, uploading it when Ray lacks it.
type WorkingDirs interface {
	WorkingDir(ctx context.Context) (string, error)
}

// Store is the part of the records store the deployer reads and writes.
type Store interface {
	Heartbeat(ctx context.Context) (records.Heartbeat, bool, error)
	Deploy(ctx context.Context) (records.Deploy, uint64, error)
	SetDeploy(ctx context.Context, d records.Deploy, rev uint64) error
	Claim(ctx context.Context, version string) (records.Claim, uint64, error)
	SetClaim(ctx context.Context, c records.Claim, rev uint64) error
}

// StartupGrace is how long a submitted executor may take to write its first heartbeat
// before it counts as stuck and is replaced (a cold node may install its runtime env). A
// driver that cannot reach NATS exits by itself before this (the payload's
// START_NATS_SECONDS, 90 s; TestThePayloadsStartBoundIsBelowStartupGrace keeps the order),
// so its job ends FAILED with the reason in Ray's message.
const StartupGrace = 3 * time.Minute

// VerifyEvery is how often a live executor's heartbeat is checked against Ray: a process
// can outlive its node or its head (a killed raylet, a head restarted while its workers
// ran on) and go on beating for a job the cluster no longer has. Between checks a fresh
// heartbeat costs one KV read; when Ray cannot answer the heartbeat is trusted.
const VerifyEvery = 30 * time.Second

// SubmitGrace is how long a deploy key may name a job Ray does not know yet: the deployer
// that wrote it submits after writing it (uploading the payload package first). Past it, the
// job is taken as lost (a restarted head, a deployer that died before submitting).
const SubmitGrace = time.Minute

// RollHold is how long a deploy of another version stands before this deployer replaces
// it: a deploy of the newer version (below) is never replaced while its deployers run, and
// one of an older version is replaced once it has stood this long, so that a version
// whose deployers have all gone cannot be rolled away from and back at once.
const RollHold = 2 * time.Minute

// ClaimEvery and ClaimStale: every deployer refreshes its version's claim
// (records.Claim) at most once per ClaimEvery, on its checks; a claim not refreshed for
// ClaimStale means no function of that version runs any more (a finished rollout, an
// aborted canary, list's PingSource stopped). During a rollout old and new function
// revisions run side by side, each deploying its own version (payload and settings); the
// newer one, the version whose claim appeared last, wins, and the deployers of the older
// defer to it (StateDeferred) instead of rolling it back. Without that, two revisions would
// hand the executor back and forth once per RollHold for as long as both run. ClaimStale
// is how long a version whose functions have all gone keeps its executor before the older
// version still running takes it back.
const (
	ClaimEvery = time.Minute
	ClaimStale = 5 * time.Minute
)

// DeployRefresh is how often the deployers of the deployed version rewrite the deploy key
// as it is. The records bucket expires every key not written within RETENTION (at least
// 1 h), and an executor that runs for longer would otherwise lose its deploy key: the next
// deploy would start again from generation 1 with no crash count and no earlier jobs to
// delete, and a deployer of another version would take a missing key for a first deploy,
// past its deferring and RollHold.
const DeployRefresh = 10 * time.Minute

// CrashWindow: a generation that ends, or is given up on, within this long of its
// submission crashed. Crashes in a row back the next submission off (Backoff); a
// generation that ran longer ends the run of crashes.
const CrashWindow = 10 * time.Minute

// Backoff is how long after the n-th crash in a row the next generation is submitted: at
// once after the first (a one-off), then 15 s, doubling up to 5 min. Without it an executor
// that cannot start (a PAYLOAD_NATS_URL the cluster cannot reach, a payload that fails on
// import) would be submitted again on every check, every few seconds, each attempt a Ray
// job with a driver log file on the head's disk.
func Backoff(n int) time.Duration {
	if n < 2 {
		return 0
	}
	d := 15 * time.Second
	for i := 2; i < n && d < 5*time.Minute; i++ {
		d *= 2
	}
	return min(d, 5*time.Minute)
}

// maxRetired bounds the earlier generations the deploy key remembers to delete from Ray.
const maxRetired = 16

// MetadataMarker marks the executor's Ray job (metadata "ray_executor": "executor").
const MetadataMarker = "executor"

// State is what Ensure found or did.
type State string

// States of the executor as Ensure sees it.
const (
	StateLive     State = "live"     // a fresh heartbeat of this version
	StateStarting State = "starting" // submitted, no heartbeat yet
	StateDeployed State = "deployed" // this call submitted it
	StateHeld     State = "held"     // another version was deployed less than RollHold ago
	StateDeferred State = "deferred" // a newer version is deployed and its deployers run
	StateBackoff  State = "backoff"  // it crashed again soon after starting; the next waits
)

// Deployer keeps the executor of Version running. Every function that may find it missing
// runs one (execute in the background, the list reconciler on its tick); the deploy key's
// compare-and-set makes them agree on one submission.
type Deployer struct {
	Store       Store
	Jobs        Jobs
	WorkingDirs WorkingDirs
	Version     string
	// Env is the executor's environment (NATS settings, EXECUTOR_* settings): operator
	// settings only, never caller text.
	Env map[string]string
	// EntrypointNumCPUs is reserved for the executor's driver (0: none).
	EntrypointNumCPUs float64
	Logger            *slog.Logger
	Now               func() time.Time

	mu       sync.Mutex // one Ensure at a time per process
	verified time.Time  // when the live heartbeat's job was last found running in Ray
	waiting  string     // the crashed submission whose backoff this process last logged
	deferred string     // the newer version's submission this process last logged deferring to
	claimed  time.Time  // when this process last refreshed its version's claim
	kept     time.Time  // when this process last rewrote the deploy key (DeployRefresh)
	first    time.Time  // when this version's claim appeared (its FirstSeen)
}

func (d *Deployer) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *Deployer) logger() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.Default()
}

// Ensure makes sure an executor of d.Version runs or is starting: it reads the heartbeat
// (one KV read when all is well), and otherwise checks the deployed job with Ray and
// submits a new generation when Ray lost it, it failed, or it never started. A different
// version named in the deploy key is replaced by this one (the roll: the old executor sees
// the key change, stops pulling, finishes what it holds, and exits).
func (d *Deployer) Ensure(ctx context.Context) (State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	if err := d.claim(ctx, now); err != nil {
		return "", err
	}
	if err := d.keepDeployKey(ctx, now); err != nil {
		return "", err
	}
	hb, ok, err := d.Store.Heartbeat(ctx)
	if err != nil {
		return "", err
	}
	if ok && hb.Fresh(now) && hb.Version == d.Version {
		if now.Sub(d.verified) < VerifyEvery || d.runsInRay(ctx, hb) {
			return StateLive, nil
		}
	}
	dep, rev, err := d.Store.Deploy(ctx)
	if err != nil {
		return "", err
	}
	failures := 0 // crashes in a row, the generation being replaced included
	reason := ReasonFirst
	if dep.Version == d.Version && dep.SubmissionID != "" {
		job, err := d.Jobs.Job(ctx, dep.SubmissionID)
		var ended time.Time // when the generation ended, or was given up on
		how := ""           // how it ended, for the backoff's log line; Ray's word unless we stopped it
		switch {
		case err == nil && !job.Status.Terminal():
			if ok && hb.SubmissionID == dep.SubmissionID && hb.Fresh(now) {
				return StateLive, nil
			}
			if now.Sub(domain.ParseTime(dep.At)) < StartupGrace {
				return StateStarting, nil
			}
			d.logger().Warn("the executor job runs but has written no heartbeat; replacing it",
				"submission_id", dep.SubmissionID, "ray_status", string(job.Status))
			if _, err := d.Jobs.Stop(ctx, dep.SubmissionID); err != nil && !errors.Is(err, domain.ErrNotFound) {
				return "", fmt.Errorf("executor: stop stuck %s: %w", dep.SubmissionID, err)
			}
			ended, reason = now, ReasonStuck
			how = fmt.Sprintf("stopped: no heartbeat within %s of its submission", StartupGrace)
		case err == nil:
			reason = ReasonEnded
			if ended = job.EndTime; ended.IsZero() {
				ended = domain.ParseTime(dep.At)
			}
		case errors.Is(err, domain.ErrNotFound) && now.Sub(domain.ParseTime(dep.At)) < SubmitGrace:
			// The deployer that wrote the key is still uploading the package and submitting:
			// submitting another generation now would run two executors of this version.
			return StateStarting, nil
		case errors.Is(err, domain.ErrNotFound):
			reason = ReasonLost
			d.logger().Warn("Ray has no record of the executor job (a restarted head?); submitting it again",
				"submission_id", dep.SubmissionID)
		default:
			return "", fmt.Errorf("executor: look up %s: %w", dep.SubmissionID, err)
		}
		if !ended.IsZero() {
			if ended.Sub(domain.ParseTime(dep.At)) < CrashWindow {
				failures = dep.Failures + 1
				if reason == ReasonEnded {
					reason = ReasonCrashed
				}
			}
			if wait := Backoff(failures); now.Before(ended.Add(wait)) {
				if d.waiting != dep.SubmissionID {
					d.waiting = dep.SubmissionID
					if how == "" {
						how = fmt.Sprintf("Ray reports it %s: %s", job.Status, messageTail(job.Message))
					}
					d.logger().Warn("the executor crashed again soon after it started; waiting before submitting it again",
						"submission_id", dep.SubmissionID, "how", how, "crashes_in_a_row", failures,
						"next_at", domain.FormatTime(ended.Add(wait)))
				}
				return StateBackoff, nil
			}
			if job.Status.Terminal() {
				d.logger().Warn("the executor job ended; submitting it again", "submission_id", dep.SubmissionID,
					"ray_status", string(job.Status), "ray_message", messageTail(job.Message), "crashes_in_a_row", failures)
			}
		}
	} else if dep.Version != "" {
		newer, theirs, err := d.isNewer(ctx, dep.Version, now)
		if err != nil {
			return "", err
		}
		if newer {
			if d.deferred != dep.SubmissionID {
				d.deferred = dep.SubmissionID
				d.logger().Info("a newer executor version is deployed and functions of that version run; "+
					"this function's version defers to it (if the rollout is over and this persists, the functions "+
					"disagree on the executor's settings: compare their EXECUTOR_*, PAYLOAD_NATS_URL, RETENTION and OTEL_*)",
					"deployed", dep.Version, "deployed_first_seen", domain.FormatTime(theirs),
					"this_version", d.Version, "this_first_seen", domain.FormatTime(d.first))
			}
			return StateDeferred, nil
		}
		if now.Sub(domain.ParseTime(dep.At)) < RollHold {
			return StateHeld, nil
		}
		reason = ReasonRoll
		d.logger().Info("rolling the executor to this version (its payload or settings changed)", "from", dep.Version, "to", d.Version)
	}
	next := records.Deploy{Version: d.Version, Generation: dep.Generation + 1, At: domain.FormatTime(now),
		Failures: failures, Previous: dep.SubmissionID, Retired: d.prune(ctx, append(dep.Retired, dep.Previous))}
	next.SubmissionID = records.SubmissionID(d.Version, next.Generation)
	if err := d.Store.SetDeploy(ctx, next, rev); err != nil {
		if errors.Is(err, domain.ErrAlreadyExists) {
			return StateStarting, nil // another deployer won; it submits
		}
		return "", err
	}
	if err := d.submit(ctx, next); err != nil {
		return "", err
	}
	countDeploy(reason)
	return StateDeployed, nil
}

// claim refreshes this version's claim, at most once per ClaimEvery, and learns when the
// version first appeared: its claim's FirstSeen; when the claim is new or stale, when this
// process first claimed (it could not refresh, NATS being down), or now (every function of
// this version had gone). When another deployer of this version wrote the claim first,
// its fresh claim is taken as it is.
func (d *Deployer) claim(ctx context.Context, now time.Time) error {
	if !d.claimed.IsZero() && now.Sub(d.claimed) >= 0 && now.Sub(d.claimed) < ClaimEvery {
		return nil
	}
	for attempt := 0; ; attempt++ {
		c, rev, err := d.Store.Claim(ctx, d.Version)
		if err != nil {
			return err
		}
		first := domain.ParseTime(c.FirstSeen)
		live := !first.IsZero() && claimLive(c, now)
		if live && attempt > 0 {
			d.claimed, d.first = now, first
			return nil
		}
		if !live {
			if first = d.first; first.IsZero() {
				first = now
			}
		}
		err = d.Store.SetClaim(ctx, records.Claim{Version: d.Version, FirstSeen: domain.FormatTime(first),
			Seen: domain.FormatTime(now)}, rev)
		if errors.Is(err, domain.ErrAlreadyExists) && attempt < 3 {
			continue
		}
		if err != nil {
			return fmt.Errorf("executor: claim version %s: %w", d.Version, err)
		}
		d.claimed, d.first = now, first
		return nil
	}
}

// keepDeployKey rewrites the deploy key as it is, at most once per DeployRefresh, when it
// names this version's executor, so that the bucket's MaxAge never expires it. Losing the
// compare-and-set to another writer is fine: the key was just written.
func (d *Deployer) keepDeployKey(ctx context.Context, now time.Time) error {
	if !d.kept.IsZero() && now.Sub(d.kept) >= 0 && now.Sub(d.kept) < DeployRefresh {
		return nil
	}
	dep, rev, err := d.Store.Deploy(ctx)
	if err != nil {
		return err
	}
	if rev != 0 && dep.Version == d.Version && dep.SubmissionID != "" {
		if err := d.Store.SetDeploy(ctx, dep, rev); err != nil && !errors.Is(err, domain.ErrAlreadyExists) {
			return err
		}
	}
	d.kept = now
	return nil
}

func claimLive(c records.Claim, now time.Time) bool {
	seen := domain.ParseTime(c.Seen)
	return !seen.IsZero() && now.Sub(seen) < ClaimStale
}

// isNewer reports whether version, deployed now, is newer than this deployer's: functions
// of it still run (its claim is live) and its claim appeared after this version's (on a
// tie, the greater version string wins, so that exactly one side defers). theirs is its
// claim's FirstSeen.
func (d *Deployer) isNewer(ctx context.Context, version string, now time.Time) (newer bool, theirs time.Time, err error) {
	c, _, err := d.Store.Claim(ctx, version)
	if err != nil {
		return false, time.Time{}, err
	}
	theirs = domain.ParseTime(c.FirstSeen)
	if theirs.IsZero() || !claimLive(c, now) {
		return false, theirs, nil
	}
	if theirs.Equal(d.first) {
		return version > d.Version, theirs, nil
	}
	return theirs.After(d.first), theirs, nil
}

// runsInRay reports whether the heartbeat's job is one Ray runs, or Ray cannot tell (then
// the heartbeat is trusted). false means an orphan: Ray does not know the job, or knows it
// as ended, yet something beats for it; a new deployment replaces it (the orphan sees the
// deploy key name another submission, drains and exits).
func (d *Deployer) runsInRay(ctx context.Context, hb records.Heartbeat) bool {
	job, err := d.Jobs.Job(ctx, hb.SubmissionID)
	switch {
	case err == nil && !job.Status.Terminal():
		d.verified = d.now()
		return true
	case err == nil || errors.Is(err, domain.ErrNotFound):
		d.logger().Warn("an executor beats for a job this Ray cluster does not run (a process that outlived its node "+
			"or head); deploying a new one, which makes the orphan exit", "submission_id", hb.SubmissionID,
			"ray_status", string(job.Status))
		return false
	default:
		return true // Ray cannot answer: the heartbeat is the best evidence there is
	}
}

// maxMessageLog bounds how much of a Ray job's message a log line carries. Ray puts up to
// 20,000 characters of the driver's last log lines into a failed job's message; the end
// says why it failed.
const maxMessageLog = 1000

// messageTail is the end of a Ray job message, at most maxMessageLog bytes, cut on a rune
// boundary and marked when cut.
func messageTail(m string) string {
	if len(m) <= maxMessageLog {
		return m
	}
	i := len(m) - maxMessageLog
	for i < len(m) && !utf8.RuneStart(m[i]) {
		i++
	}
	return "…" + m[i:]
}

// prune deletes the jobs of generations before the one being replaced from Ray once they
// have ended, and returns those it could not delete yet, for the next deploy to try again.
// Until deleted, an ended job keeps its entry in Ray's job table (which the dashboard and
// `ray job list` read whole), and a crashing executor leaves one per attempt. Ray's delete
// leaves the driver's log file in the head's session directory; `ray job logs` no longer
// reads it. The generation being replaced is kept (Previous) so that `ray job logs` can
// still say why it ended. A job still running (an old version draining after a roll) is
// kept; so is every id from the first that Ray fails to answer for.
func (d *Deployer) prune(ctx context.Context, ids []string) []string {
	var keep []string
	for i, id := range ids {
		if id == "" {
			continue
		}
		job, err := d.Jobs.Job(ctx, id)
		if err == nil && job.Status.Terminal() {
			err = d.Jobs.Delete(ctx, id)
		}
		switch {
		case err == nil && job.Status.Terminal(), errors.Is(err, domain.ErrNotFound):
			d.logger().Debug("an earlier executor job is gone from Ray", "submission_id", id)
		case err == nil:
			keep = append(keep, id)
		default:
			d.logger().Debug("cannot delete an earlier executor job from Ray yet", "submission_id", id, "error", err.Error())
			keep = append(keep, ids[i:]...)
			return d.bounded(keep)
		}
	}
	return d.bounded(keep)
}

func (d *Deployer) bounded(ids []string) []string {
	var out []string
	for _, id := range ids {
		if id != "" {
			out = append(out, id)
		}
	}
	if n := len(out) - maxRetired; n > 0 {
		d.logger().Warn("earlier executor jobs wait to be deleted from Ray; forgetting the oldest, which `ray job delete` removes",
			"submission_ids", strings.Join(out[:n], ","))
		out = out[n:]
	}
	return out
}

func (d *Deployer) submit(ctx context.Context, dep records.Deploy) error {
	wd, err := d.WorkingDirs.WorkingDir(ctx)
	if err != nil {
		return fmt.Errorf("executor: payload package: %w", err)
	}
	env := maps.Clone(d.Env)
	if env == nil {
		env = map[string]string{}
	}
	env["EXECUTOR_VERSION"] = dep.Version
	env["EXECUTOR_SUBMISSION_ID"] = dep.SubmissionID
	_, err = d.Jobs.Submit(ctx, ray.SubmitRequest{
		Entrypoint:        Entrypoint,
		SubmissionID:      dep.SubmissionID,
		RuntimeEnv:        map[string]any{"working_dir": wd, "env_vars": env},
		Metadata:          map[string]string{domain.MetaMarker: MetadataMarker, "version": dep.Version},
		EntrypointNumCPUs: d.EntrypointNumCPUs,
	})
	if err != nil && !errors.Is(err, domain.ErrAlreadyExists) {
		return fmt.Errorf("executor: submit %s: %w", dep.SubmissionID, err)
	}
	d.logger().Info("executor submitted to Ray", "submission_id", dep.SubmissionID, "version", dep.Version)
	return nil
}

// Run calls Ensure every interval and whenever Poke is called, until ctx ends. Errors are
// logged (at most once a minute while they repeat): the next tick tries again.
func (d *Deployer) Run(ctx context.Context, interval time.Duration, poke <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var lastLogged time.Time
	for {
		st, err := d.Ensure(ctx)
		if err != nil && ctx.Err() == nil && time.Since(lastLogged) > time.Minute {
			d.logger().Warn("cannot make sure the executor runs; retrying", "error", err.Error())
			lastLogged = time.Now()
		}
		if err == nil && st == StateDeployed {
			lastLogged = time.Time{}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-poke:
		}
	}
}
