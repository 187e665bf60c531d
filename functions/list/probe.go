package list

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// ProbeTTL is how long an answer about Ray is reused by GetStatus.
const ProbeTTL = 2 * time.Second

// Probe runs a dependency check at most once per TTL however many GetStatus calls ask, and
// lets concurrent askers share the one check in flight, so a flood of GetStatus calls
// costs Ray one request every TTL (issue 12: probes are cheap). The check runs on its own
// bounded context: a caller that gives up does not fail it for the others.
type Probe struct {
	Check   func(context.Context) error
	TTL     time.Duration
	Timeout time.Duration // bound on one check; 5 s when zero

	mu      sync.Mutex
	at      time.Time
	err     error
	running chan struct{}
}

// Ready is the latest answer, checking again when it is older than TTL.
func (p *Probe) Ready(ctx context.Context) error {
	p.mu.Lock()
	if !p.at.IsZero() && time.Since(p.at) < p.TTL {
		err := p.err
		p.mu.Unlock()
		return err
	}
	if ch := p.running; ch != nil {
		p.mu.Unlock()
		select {
		case <-ch:
			p.mu.Lock()
			defer p.mu.Unlock()
			return p.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ch := make(chan struct{})
	p.running = ch
	p.mu.Unlock()

	timeout := p.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	err := p.Check(cctx)
	cancel()

	p.mu.Lock()
	p.err, p.at, p.running = err, time.Now(), nil
	p.mu.Unlock()
	close(ch)
	return err
}

// rayTrouble says what is wrong with Ray in words fit for any caller: the error's class,
// never its text (which names internal addresses). The detail goes to the log.
func rayTrouble(err error, logger *slog.Logger) string {
	if logger != nil {
		logger.Warn("Ray does not answer GetStatus's check", "error", err.Error())
	}
	switch {
	case errors.Is(err, domain.ErrUnauthenticated), errors.Is(err, domain.ErrPermissionDenied):
		return "the Ray dashboard refused the token: RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE is wrong for this cluster " +
			"(details in the list function's log)"
	case errors.Is(err, domain.ErrDeadline), errors.Is(err, context.DeadlineExceeded):
		return "Ray does not answer in time (details in the list function's log)"
	default:
		return "Ray is unreachable or failing (details in the list function's log)"
	}
}
