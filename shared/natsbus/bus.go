// Package natsbus is the connection to NATS JetStream every binary shares: its settings
// (NATS_*, ENABLE_NATS, RETENTION), the lifecycle and agent-response streams it provisions,
// publishing the events of shared/events with their message ids (de-duplicated by the
// stream), and reading a deliberation's events back for WatchDeliberation.
package natsbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/events"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

// Stream names and subjects (specs/nats.md).
const (
	DefaultEventsStream    = "RAY_EXECUTOR_EVENTS"
	DefaultResponsesStream = "AGENT_RESPONSES"
	ResponsesSubjects      = "agent.response.>"
	DuplicateWindow        = 2 * time.Hour
	MaxAge                 = 7 * 24 * time.Hour
)

// Config is how a binary reaches NATS. Credentials are never logged.
type Config struct {
	Enabled         bool   // ENABLE_NATS
	URL             string // NATS_URL
	Token           string // NATS_TOKEN(_FILE)
	User, Password  string // NATS_USER, NATS_PASSWORD(_FILE)
	CredsFile       string // NATS_CREDS_FILE
	TLSCAFile       string // NATS_TLS_CA_FILE
	TLSCertFile     string // NATS_TLS_CERT_FILE
	TLSKeyFile      string // NATS_TLS_KEY_FILE
	Provision       bool   // NATS_PROVISION_STREAMS: create or update the streams at start
	EventsStream    string // NATS_EVENTS_STREAM
	ResponsesStream string // NATS_AGENT_RESPONSES_STREAM
	// PublishTimeout bounds one publish (NATS_PUBLISH_TIMEOUT).
	PublishTimeout time.Duration
	// Retention is how long finished deliberations' records and events are kept (RETENTION).
	Retention time.Duration
}

// ReadConfig reads the NATS settings every binary shares.
func ReadConfig(r *config.Reader) Config {
	c := Config{
		Enabled:         r.Bool("ENABLE_NATS", true),
		URL:             r.String("NATS_URL", nats.DefaultURL),
		Token:           r.Secret("NATS_TOKEN"),
		User:            r.String("NATS_USER", ""),
		Password:        r.Secret("NATS_PASSWORD"),
		CredsFile:       r.String("NATS_CREDS_FILE", ""),
		TLSCAFile:       r.String("NATS_TLS_CA_FILE", ""),
		TLSCertFile:     r.String("NATS_TLS_CERT_FILE", ""),
		TLSKeyFile:      r.String("NATS_TLS_KEY_FILE", ""),
		Provision:       r.Bool("NATS_PROVISION_STREAMS", true),
		EventsStream:    r.String("NATS_EVENTS_STREAM", DefaultEventsStream),
		ResponsesStream: r.String("NATS_AGENT_RESPONSES_STREAM", DefaultResponsesStream),
		PublishTimeout:  r.Duration("NATS_PUBLISH_TIMEOUT", 2*time.Second),
		Retention:       r.Duration("RETENTION", MaxAge),
	}
	if !c.Enabled {
		r.Fail("ENABLE_NATS=false is no longer supported: NATS JetStream holds the deliberation records and the work queue the executor pulls from; set NATS_URL to a NATS server with JetStream")
	}
	if c.Retention < time.Hour {
		r.Fail("RETENTION must be at least 1h")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		r.Fail("NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together")
	}
	return c
}

// Bus is a connection to JetStream. A Bus whose NATS is down keeps reconnecting in the
// background; calls made meanwhile fail fast with ErrUnavailable instead of waiting.
type Bus struct {
	cfg    Config
	name   string
	nc     *nats.Conn
	extra  []*nats.Conn // Dial's, closed with the bus
	js     jetstream.JetStream
	logger *slog.Logger
}

// Connect dials NATS without waiting for it: a NATS that is down at start does not stop
// the binary, which reconnects whenever NATS comes back.
func Connect(cfg Config, name string, logger *slog.Logger) (*Bus, error) {
	if cfg.EventsStream == "" {
		cfg.EventsStream = DefaultEventsStream
	}
	if cfg.ResponsesStream == "" {
		cfg.ResponsesStream = DefaultResponsesStream
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = 2 * time.Second
	}
	nc, err := dial(cfg, name, logger)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("events: %w", err)
	}
	return &Bus{cfg: cfg, name: name, nc: nc, js: js, logger: logger}, nil
}

// dial opens one connection with the bus's options.
func dial(cfg Config, name string, logger *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectBufSize(-1), // never buffer publishes while disconnected: callers decide
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("NATS disconnected", "error", err.Error())
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { logger.Info("NATS reconnected", "url", nc.ConnectedUrlRedacted()) }),
	}
	switch {
	case cfg.CredsFile != "":
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCAFile))
	}
	if cfg.TLSCertFile != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCertFile, cfg.TLSKeyFile))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("events: connect %s: %w", redact(cfg.URL), err)
	}
	return nc, nil
}

// redact drops credentials from a NATS URL before it is logged.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	u.User = url.User("redacted")
	return u.String()
}

// Close drains nothing and closes the connection and those Dial opened.
func (b *Bus) Close() {
	for _, nc := range b.extra {
		nc.Close()
	}
	b.nc.Close()
}

// Dial opens another connection with the bus's settings, closed when the bus is. Not safe
// for concurrent use with itself: binaries call it while they are composed.
func (b *Bus) Dial() (*nats.Conn, jetstream.JetStream, error) {
	nc, err := dial(b.cfg, b.name, b.logger)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("events: %w", err)
	}
	b.extra = append(b.extra, nc)
	return nc, js, nil
}

// Connected reports whether NATS answers right now.
func (b *Bus) Connected() bool { return b.nc.IsConnected() }

// Config is the bus's configuration.
func (b *Bus) Config() Config { return b.cfg }

// Conn and JetStream give the other NATS adapters (shared/records) the bus's connection,
// so a binary holds one connection.
func (b *Bus) Conn() *nats.Conn { return b.nc }

// JetStream is the bus's JetStream context.
func (b *Bus) JetStream() jetstream.JetStream { return b.js }

// Ready reports ErrUnavailable while NATS is disconnected, so callers fail fast.
func (b *Bus) Ready() error { return b.ready() }

func (b *Bus) retention() time.Duration {
	if b.cfg.Retention > 0 {
		return b.cfg.Retention
	}
	return MaxAge
}

func (b *Bus) ready() error {
	if !b.nc.IsConnected() {
		return fmt.Errorf("events: NATS is not connected (%s): %w", b.nc.Status(), domain.ErrUnavailable)
	}
	return nil
}

// Provision creates or updates the two streams (specs/nats.md).
func (b *Bus) Provision(ctx context.Context) error {
	if err := b.ready(); err != nil {
		return err
	}
	for _, sc := range []jetstream.StreamConfig{
		{
			Name: b.cfg.EventsStream, Subjects: []string{events.SubjectPrefix + ".>"},
			Description: "ray-executor deliberation lifecycle events (CloudEvents)",
			Retention:   jetstream.LimitsPolicy, Storage: jetstream.FileStorage,
			MaxAge: b.retention(), Duplicates: min(DuplicateWindow, b.retention()),
		},
		{
			Name: b.cfg.ResponsesStream, Subjects: []string{ResponsesSubjects},
			Description: "agent responses in the original ray executor's format",
			Retention:   jetstream.LimitsPolicy, Storage: jetstream.FileStorage,
			MaxAge: b.retention(), Duplicates: min(DuplicateWindow, b.retention()),
		},
	} {
		if _, err := b.js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("events: provision stream %s: %w", sc.Name, err)
		}
	}
	return nil
}

// Publish stores ev on its subject with its id as Nats-Msg-Id. Errors wrap ErrUnavailable
// when NATS is down or did not acknowledge in time.
func (b *Bus) Publish(ctx context.Context, ev events.Event) error {
	body, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("events: encode %s: %w", ev.ID, err)
	}
	return b.PublishRaw(ctx, events.SubjectPrefix+"."+ev.Subject+"."+string(ev.Kind()), ev.ID, "application/cloudevents+json", body)
}

// PublishRaw stores body on subject with msgID as Nats-Msg-Id.
func (b *Bus) PublishRaw(ctx context.Context, subject, msgID, contentType string, body []byte) error {
	if err := b.ready(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.PublishTimeout)
	defer cancel()
	msg := nats.NewMsg(subject)
	msg.Data = body
	msg.Header.Set("Content-Type", contentType)
	end := telemetry.StartPublish(ctx, streamOf(subject), msg.Header)
	_, err := b.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID))
	end(err)
	if err != nil {
		return fmt.Errorf("events: publish %s: %v: %w", msgID, err, domain.ErrUnavailable)
	}
	return nil
}

// streamOf names a subject's destination for a span without its ids: its first two
// tokens (ray_executor.deliberation, agent.response).
func streamOf(subject string) string {
	parts := strings.SplitN(subject, ".", 3)
	if len(parts) < 2 {
		return subject
	}
	return parts[0] + "." + parts[1]
}

// Stored is a lifecycle event as the stream holds it.
type Stored struct {
	events.Event
	Sequence uint64
}

// Watch calls fn with every stored event of deliberation id from the first, then with new
// ones as they arrive, until fn returns true, ctx ends, or reading fails.
func (b *Bus) Watch(ctx context.Context, id string, fn func(Stored) bool) error {
	if err := b.ready(); err != nil {
		return err
	}
	cons, err := b.js.OrderedConsumer(ctx, b.cfg.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.SubjectFilter(id)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("events: watch %s: %v: %w", id, err, domain.ErrUnavailable)
	}
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, nats.ErrTimeout), errors.Is(err, jetstream.ErrNoMessages):
			continue
		default:
			return fmt.Errorf("events: watch %s: %v: %w", id, err, domain.ErrUnavailable)
		}
		st, ok := decodeStored(msg)
		if !ok {
			b.logger.Warn("skipping an undecodable lifecycle event", "subject", msg.Subject())
			continue
		}
		if fn(st) {
			return nil
		}
	}
}

// Stored returns every event of deliberation id stored now, in order.
func (b *Bus) Stored(ctx context.Context, id string) ([]Stored, error) {
	if err := b.ready(); err != nil {
		return nil, err
	}
	cons, err := b.js.OrderedConsumer(ctx, b.cfg.EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.SubjectFilter(id)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("events: read %s: %v: %w", id, err, domain.ErrUnavailable)
	}
	return drain(ctx, cons, id, 0)
}

// drain reads what an ordered consumer has pending when it starts, up to limit events
// (no limit when limit <= 0).
func drain(ctx context.Context, cons jetstream.Consumer, what string, limit int) ([]Stored, error) {
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("events: read %s: %v: %w", what, err, domain.ErrUnavailable)
	}
	var out []Stored
	for pending := info.NumPending; pending > 0 && (limit <= 0 || len(out) < limit); {
		msg, err := cons.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			return nil, fmt.Errorf("events: read %s: %v: %w", what, err, domain.ErrUnavailable)
		}
		if st, ok := decodeStored(msg); ok {
			out = append(out, st)
		}
		md, err := msg.Metadata()
		if err != nil {
			return nil, fmt.Errorf("events: read %s: %w", what, err)
		}
		pending = md.NumPending
	}
	return out, nil
}

func decodeStored(msg jetstream.Msg) (Stored, bool) {
	var st Stored
	if err := json.Unmarshal(msg.Data(), &st.Event); err != nil {
		return Stored{}, false
	}
	if md, err := msg.Metadata(); err == nil {
		st.Sequence = md.Sequence.Stream
	}
	return st, true
}

// PayloadURLEnv carries the NATS address to the executor in the Ray job's environment, and
// PayloadEventsStreamEnv the lifecycle stream's name it publishes to.
const (
	PayloadURLEnv          = "RAY_EXECUTOR_NATS_URL"
	PayloadEventsStreamEnv = "RAY_EXECUTOR_NATS_EVENTS_STREAM"
)

// ProvisionInBackground creates or updates the streams as soon as NATS answers (at once
// when it is up), retrying until it succeeds or ctx ends, so that a NATS that is down at
// start neither blocks the binary nor leaves the streams unprovisioned. It does nothing
// when provisioning is off.
func ProvisionInBackground(ctx context.Context, b *Bus, logger *slog.Logger) {
	if !b.cfg.Provision {
		return
	}
	go func() {
		for delay := 200 * time.Millisecond; ; delay = min(2*delay, 10*time.Second) {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := b.Provision(pctx)
			cancel()
			if err == nil {
				logger.Info("NATS streams provisioned", "events", b.cfg.EventsStream, "responses", b.cfg.ResponsesStream)
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
}
