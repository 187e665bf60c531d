package records

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
)

// Finisher is what the steps after a terminal transition write (Store).
type Finisher interface {
	Counter
	DeleteActive(ctx context.Context, id string) error
}

// Publisher stores lifecycle events (natsbus.Bus).
type Publisher interface {
	Publish(ctx context.Context, ev events.Event) error
}

// AfterTerminal runs the steps that follow a record's terminal transition
// (specs/records.md): the terminal event (one per deliberation, by its Nats-Msg-Id), the
// outcome counters, the whole system's and the owner's (once, by their Nats-Msg-Id), and the removal from the active index. Each
// is idempotent, so any writer may run them again; failures are logged, and the executor
// or the reconciler repeats them.
func AfterTerminal(ctx context.Context, s Finisher, pub Publisher, r domain.Record, source string, logger *slog.Logger) {
	if !r.Terminal() {
		return
	}
	warn := func(what string, err error) {
		logger.Warn("after the end of a deliberation: "+what, "deliberation_id", r.ID, "error", err.Error())
	}
	if pub != nil {
		msg := r.Error
		if r.State == domain.StatusCancelled {
			msg = r.Reason
		}
		ev, err := events.TerminalEvent(source, r.Meta(), r.State, r.Outcome, msg, r.ErrorType)
		if err == nil {
			err = pub.Publish(ctx, ev)
		}
		if err != nil {
			warn("terminal event not published", err)
		}
	}
	if err := CountFor(ctx, s, string(r.State), r.Owner, r.ID+".count", 1); err != nil {
		warn("counter not incremented", err)
	}
	if r.State != domain.StatusCancelled {
		if ms := r.Duration().Milliseconds(); ms > 0 {
			if err := CountFor(ctx, s, CountDurationMS, r.Owner, r.ID+".duration", ms); err != nil {
				warn("duration not counted", err)
			}
		}
	}
	if err := s.DeleteActive(ctx, r.ID); err != nil {
		warn("not removed from the active index", err)
	}
}

// Provision creates the event streams and the records resources, retrying in the
// background until NATS takes them (a NATS that is down at start does not stop a function).
// It returns the function's readiness: NATS connected, and the resources provisioned once
// (or provisioning off), so that a new replica gets no traffic it could only refuse for a
// missing bucket. Once provisioned it never turns unready for them again.
func Provision(ctx context.Context, bus *natsbus.Bus, store *Store, logger *slog.Logger) (ready func(context.Context) error) {
	var done atomic.Bool
	ready = func(context.Context) error {
		if err := bus.Ready(); err != nil {
			return err
		}
		if !done.Load() {
			return fmt.Errorf("records: the NATS streams and the records bucket are not provisioned yet: %w", domain.ErrUnavailable)
		}
		return nil
	}
	if !bus.Config().Provision {
		done.Store(true)
		return ready
	}
	go func() {
		for delay := 200 * time.Millisecond; ; delay = min(2*delay, 10*time.Second) {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := bus.Provision(pctx)
			if err == nil {
				err = store.Provision(pctx)
			}
			cancel()
			if err == nil {
				done.Store(true)
				logger.Info("NATS streams and the records bucket provisioned")
				return
			}
			logger.Warn("NATS streams not provisioned yet", "error", err.Error())
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
		}
	}()
	return ready
}
