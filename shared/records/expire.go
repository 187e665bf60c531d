package records

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// Expirer is what ending an expired deliberation writes (Store).
type Expirer interface {
	Finisher
	Update(ctx context.Context, id string, change func(domain.Record) (domain.Record, error)) (domain.Record, error)
	Withdraw(ctx context.Context, id string) error
	RequestCancel(id string) error
}

// EndExpired ends rec when its deadline has passed at now (domain.Record.Expire) and returns
// the record as it then stands, and whether this call ended it. The compare-and-set decides
// between concurrent deciders (two status replicas, the reconciler, the executor): only the
// one whose write lands runs the after-terminal steps, so the terminal event is published
// once; the others get the winner's record back. The winner then withdraws the work: the
// queued message is purged (an executor that pulled it meanwhile finds the record ended and
// skips it), and a cancel signal stops agents still running it anywhere. A record that has
// not expired, or has ended, is returned as it is.
func EndExpired(ctx context.Context, s Expirer, pub Publisher, rec domain.Record, now time.Time, source string,
	logger *slog.Logger) (domain.Record, bool, error) {
	if !rec.Expired(now) {
		return rec, false, nil
	}
	ended, err := s.Update(ctx, rec.ID, func(cur domain.Record) (domain.Record, error) { return cur.Expire(now) })
	if errors.Is(err, domain.ErrTerminal) {
		return ended, false, nil // someone else ended it first
	}
	if err != nil {
		return rec, false, fmt.Errorf("records: end expired %s: %w", rec.ID, err)
	}
	logger.Info("deliberation ended: deadline exceeded", "deliberation_id", rec.ID, "was", rec.State,
		"deadline", rec.Deadline, "attempts", rec.Attempts, "source", source)
	AfterTerminal(ctx, s, pub, ended, source, logger)
	if err := s.Withdraw(ctx, rec.ID); err != nil {
		logger.Warn("expired deliberation: work message not withdrawn (the executor skips it when pulled)",
			"deliberation_id", rec.ID, "error", err.Error())
	}
	if rec.State == domain.StatusRunning {
		if err := s.RequestCancel(rec.ID); err != nil {
			logger.Warn("expired deliberation: cancel signal not sent (the executor stops it at its own deadline)",
				"deliberation_id", rec.ID, "error", err.Error())
		}
	}
	return ended, true, nil
}

// Withdraw removes the work message of id from the work queue, queued or delivered and not
// yet acked. Nothing to remove is no error.
func (s *Store) Withdraw(ctx context.Context, id string) error {
	if err := s.ready(); err != nil {
		return err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	st, err := s.js.Stream(ctx, s.cfg.WorkStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err == nil {
		err = st.Purge(ctx, jetstream.WithPurgeSubject(WorkSubjectPrefix+id))
	}
	if err != nil {
		return unavailable("withdraw the work of "+id, err)
	}
	return nil
}
