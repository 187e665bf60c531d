// Package records stores deliberation records, the active index, the work queue and the
// outcome counters in NATS JetStream (specs/records.md). The state machine itself is in
// shared/domain (Record); this package only reads and writes, always by compare-and-set.
package records

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
	"go.opentelemetry.io/otel/attribute"

	"github.com/fleet-ai/ray-executor/shared/config"
	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/telemetry"
)

// Default names (specs/records.md).
const (
	DefaultBucket         = "RAY_EXECUTOR_DELIBERATIONS"
	DefaultWorkStream     = "RAY_EXECUTOR_WORK"
	DefaultCountersStream = "RAY_EXECUTOR_COUNTERS"
	WorkConsumer          = "executor"
	WorkSubjectPrefix     = "ray_executor.work."
	CountSubjectPrefix    = "ray_executor.count."
	CancelSubjectPrefix   = "ray_executor.control.cancel."
	KeyExecutor           = "executor"
	KeyDeploy             = "executor.deploy"
	AckWait               = 30 * time.Second
	duplicateWindow       = 2 * time.Hour
	// HeartbeatStale is how old the executor's heartbeat may be before it counts as gone.
	HeartbeatStale = 20 * time.Second
)

// Counter names: ray_executor.count.<name>.
const (
	CountSubmitted  = "submitted"
	CountCompleted  = "completed"
	CountFailed     = "failed"
	CountCancelled  = "cancelled"
	CountDurationMS = "duration_ms"
)

// Config names the JetStream resources.
type Config struct {
	Bucket         string        // NATS_RECORDS_BUCKET
	WorkStream     string        // NATS_WORK_STREAM
	CountersStream string        // NATS_COUNTERS_STREAM
	Retention      time.Duration // RETENTION
}

// ReadConfig reads the names every binary shares.
func ReadConfig(r *config.Reader) Config {
	return Config{
		Bucket:         r.String("NATS_RECORDS_BUCKET", DefaultBucket),
		WorkStream:     r.String("NATS_WORK_STREAM", DefaultWorkStream),
		CountersStream: r.String("NATS_COUNTERS_STREAM", DefaultCountersStream),
		Retention:      r.Duration("RETENTION", 7*24*time.Hour),
	}
}

func (c Config) withDefaults() Config {
	if c.Bucket == "" {
		c.Bucket = DefaultBucket
	}
	if c.WorkStream == "" {
		c.WorkStream = DefaultWorkStream
	}
	if c.CountersStream == "" {
		c.CountersStream = DefaultCountersStream
	}
	if c.Retention <= 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	return c
}

// Store reads and writes records over one NATS connection (the events bus's).
type Store struct {
	cfg Config
	nc  *nats.Conn
	js  jetstream.JetStream
	// timeout bounds each call that has no deadline of its own.
	timeout time.Duration

	mu     sync.Mutex
	bucket jetstream.KeyValue // cached after the first lookup: one round trip less per call
	stream jetstream.Stream   // the bucket's stream, likewise

	readers []*Store // SpreadReads's: Get takes turns over s and these
	turn    atomic.Uint32
}

// New returns a store on a connected JetStream context.
func New(nc *nats.Conn, js jetstream.JetStream, cfg Config) *Store {
	return &Store{cfg: cfg.withDefaults(), nc: nc, js: js, timeout: 5 * time.Second}
}

// Config is the store's configuration.
func (s *Store) Config() Config { return s.cfg }

// SpreadReads makes Get take turns over s's connection and those of others (stores of the
// same configuration on connections of their own) and returns s. A NATS server answers one
// client connection's requests in order, so over a single connection a read whose record
// lies in a block the server must first load from disk (4 MiB for a KV bucket) holds up
// every read queued behind it: the status function reads over several
// (NATS_READ_CONNECTIONS). A reader that is disconnected is passed over for s.
func (s *Store) SpreadReads(others ...*Store) *Store {
	s.readers = others
	return s
}

func (s *Store) reader() *Store {
	if len(s.readers) == 0 {
		return s
	}
	n := int(s.turn.Add(1) % uint32(len(s.readers)+1))
	if n == 0 || !s.readers[n-1].nc.IsConnected() {
		return s
	}
	return s.readers[n-1]
}

func unavailable(what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("records: %s: %v: %w", what, err, domain.ErrDeadline)
	}
	return fmt.Errorf("records: %s: %v: %w", what, err, domain.ErrUnavailable)
}

func (s *Store) ready() error {
	if !s.nc.IsConnected() {
		return fmt.Errorf("records: NATS is not connected (%s): %w", s.nc.Status(), domain.ErrUnavailable)
	}
	return nil
}

func (s *Store) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.timeout)
}

// Provision creates or updates the bucket, the work stream and its consumer, and the
// counters stream, with exactly the config of specs/records.md.
func (s *Store) Provision(ctx context.Context) error {
	if err := s.ready(); err != nil {
		return err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	if _, err := s.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: s.cfg.Bucket, History: 1, TTL: s.cfg.Retention, Storage: jetstream.FileStorage,
		Description: "ray-executor deliberation records (specs/records.md)",
	}); err != nil {
		return unavailable("provision bucket "+s.cfg.Bucket, err)
	}
	if _, err := s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: s.cfg.WorkStream, Subjects: []string{WorkSubjectPrefix + "*"}, Retention: jetstream.WorkQueuePolicy,
		// NATS refuses a duplicate window longer than MaxAge (RETENTION may be 1h).
		Storage: jetstream.FileStorage, Duplicates: min(duplicateWindow, s.cfg.Retention), MaxAge: s.cfg.Retention,
		Description: "ray-executor work queue: accepted deliberations not yet ended (specs/records.md)",
	}); err != nil {
		return unavailable("provision stream "+s.cfg.WorkStream, err)
	}
	if _, err := s.js.CreateOrUpdateConsumer(ctx, s.cfg.WorkStream, WorkConsumerConfig()); err != nil {
		return unavailable("provision consumer "+WorkConsumer, err)
	}
	if _, err := s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: s.cfg.CountersStream, Subjects: []string{CountSubjectPrefix + "*"}, AllowMsgCounter: true,
		Storage: jetstream.FileStorage, Duplicates: duplicateWindow,
		Description: "ray-executor outcome counters (specs/records.md)",
	}); err != nil {
		return unavailable("provision stream "+s.cfg.CountersStream, err)
	}
	return nil
}

// WorkConsumerConfig is the executor's durable pull consumer (specs/records.md).
func WorkConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable: WorkConsumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: AckWait,
		MaxDeliver: -1, MaxAckPending: 10000, FilterSubject: WorkSubjectPrefix + "*",
	}
}

func (s *Store) kv(ctx context.Context) (jetstream.KeyValue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bucket != nil {
		return s.bucket, nil
	}
	kv, err := s.js.KeyValue(ctx, s.cfg.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		// Not provisioned yet (a function that provisions has not started): nothing was
		// ever accepted into it. Callers that read treat this as "none".
		return nil, fmt.Errorf("records: bucket %s does not exist yet: %w: %w", s.cfg.Bucket, errNoBucket, domain.ErrUnavailable)
	}
	if err != nil {
		return nil, unavailable("bucket "+s.cfg.Bucket, err)
	}
	s.bucket = kv
	return kv, nil
}

// errNoBucket marks a records bucket that was never created.
var errNoBucket = errors.New("no records bucket")

func recordKey(id string) string { return "d." + id }
func activeKey(id string) string { return "active." + id }

// Create stores a new pending record. ErrAlreadyExists when the id has a record: the caller
// then reads it (Get) to tell a duplicate from a conflict.
func (s *Store) Create(ctx context.Context, r domain.Record) error {
	if err := s.ready(); err != nil {
		return err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kv, err := s.kv(ctx)
	if err != nil {
		return err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("records: encode %s: %w", r.ID, err)
	}
	if _, err := kv.Create(ctx, recordKey(r.ID), b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("records: %s: %w", r.ID, domain.ErrAlreadyExists)
		}
		return unavailable("create "+r.ID, err)
	}
	return nil
}

// Get reads a record and its revision. ErrNotFound when there is none (never created, or
// expired after the retention).
func (s *Store) Get(ctx context.Context, id string) (domain.Record, uint64, error) {
	rd := s.reader()
	if err := rd.ready(); err != nil {
		return domain.Record{}, 0, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kv, err := rd.kv(ctx)
	if errors.Is(err, errNoBucket) {
		return domain.Record{}, 0, fmt.Errorf("records: %s: no records bucket yet: %w", id, domain.ErrNotFound)
	}
	if err != nil {
		return domain.Record{}, 0, err
	}
	e, err := kv.Get(ctx, recordKey(id))
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return domain.Record{}, 0, fmt.Errorf("records: %s: %w", id, domain.ErrNotFound)
		}
		return domain.Record{}, 0, unavailable("get "+id, err)
	}
	var r domain.Record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return domain.Record{}, 0, fmt.Errorf("records: %s is not a record: %v: %w", id, err, domain.ErrUnavailable)
	}
	if err := r.Check(e.Key()); err != nil {
		return domain.Record{}, 0, fmt.Errorf("records: %v: %w", err, domain.ErrUnavailable)
	}
	return r, e.Revision(), nil
}

// Update applies change to the stored record by compare-and-set, re-reading and deciding
// again when another writer got there first. change returns the new record, or an error
// (domain.ErrTerminal when the deliberation has ended) that Update returns with the record
// as read.
func (s *Store) Update(ctx context.Context, id string, change func(domain.Record) (domain.Record, error)) (domain.Record, error) {
	for attempt := 0; ; attempt++ {
		cur, rev, err := s.Get(ctx, id)
		if err != nil {
			return domain.Record{}, err
		}
		next, err := change(cur)
		if err != nil {
			return cur, err
		}
		b, err := json.Marshal(next)
		if err != nil {
			return cur, fmt.Errorf("records: encode %s: %w", id, err)
		}
		cctx, cancel := s.bound(ctx)
		kv, err := s.kv(cctx)
		if err == nil {
			_, err = kv.Update(cctx, recordKey(id), b, rev)
		}
		cancel()
		if err == nil {
			return next, nil
		}
		if !isWrongRevision(err) || attempt >= 50 {
			return cur, unavailable("update "+id, err)
		}
	}
}

func isWrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return true
	}
	return errors.Is(err, jetstream.ErrKeyExists)
}

// PutActive stores the active index entry of a record that has not ended.
func (s *Store) PutActive(ctx context.Context, e domain.ActiveEntry) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kv, err := s.kv(ctx)
	if err != nil {
		return err
	}
	b, _ := json.Marshal(e)
	if _, err := kv.Put(ctx, activeKey(e.ID), b); err != nil {
		return unavailable("index "+e.ID, err)
	}
	return nil
}

// DeleteActive removes a record from the active index (after its terminal transition). It
// purges the entry's subject rather than writing a KV delete marker, so the index holds
// exactly the active deliberations: Active reads it in one atomic batch of at most
// 1,024 entries, and a marker would count against that as one.
func (s *Store) DeleteActive(ctx context.Context, id string) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	st, err := s.bucketStream(ctx)
	if err != nil {
		return err
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(s.subject(activeKey(id)))); err != nil {
		return unavailable("unindex "+id, err)
	}
	return nil
}

// bucketStream is the stream under the records bucket, looked up once.
func (s *Store) bucketStream(ctx context.Context) (jetstream.Stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stream != nil {
		return s.stream, nil
	}
	st, err := s.js.Stream(ctx, s.streamName())
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("records: bucket %s does not exist yet: %w: %w", s.cfg.Bucket, errNoBucket, domain.ErrUnavailable)
	}
	if err != nil {
		return nil, unavailable("bucket "+s.cfg.Bucket, err)
	}
	s.stream = st
	return st, nil
}

func (s *Store) streamName() string { return "KV_" + s.cfg.Bucket }

// subject is a key's subject in the bucket's stream.
func (s *Store) subject(key string) string { return "$KV." + s.cfg.Bucket + "." + key }

// Active reads the active index: what it costs grows with the active deliberations, never
// with the history. It is one snapshot: a deliberation that is active the whole time the
// read takes is listed, however the index changes meanwhile. Entries that do not decode are
// reported in bad and left out.
func (s *Store) Active(ctx context.Context) (out []domain.ActiveEntry, bad []string, err error) {
	if err := s.ready(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kv, err := s.kv(ctx)
	if errors.Is(err, errNoBucket) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	entries, err := s.activeBatch(ctx)
	if errors.Is(err, errNoBatch) {
		entries, err = s.activeWatched(ctx, kv)
	}
	if err != nil {
		return nil, nil, unavailable("read the active index", err)
	}
	for _, e := range entries {
		var a domain.ActiveEntry
		if err := json.Unmarshal(e.value, &a); err != nil || a.ID == "" {
			bad = append(bad, e.key)
			continue
		}
		out = append(out, a)
	}
	return out, bad, nil
}

// errNoBatch: the index cannot be read in one batch (more than 1,024 entries, which
// nats-server's getDirectMulti refuses with 413, or a server older than 2.11); Active reads
// it with a watcher instead.
var errNoBatch = errors.New("no batch read")

type keyValue struct {
	key   string
	value []byte
}

// activeBatch reads the index in one direct batch request for the last message of every
// active.* subject. The server answers it under its store's lock, so it is a true snapshot,
// and it needs no consumer: one round trip. Markers that older versions wrote (KV deletes)
// are skipped.
func (s *Store) activeBatch(ctx context.Context) ([]keyValue, error) {
	msgs, err := jetstreamext.GetLastMsgsFor(ctx, s.js, s.streamName(), []string{s.subject("active.*")})
	if err != nil {
		return nil, err
	}
	prefix := s.subject("")
	var out []keyValue
	pending := -1
	for m, err := range msgs {
		switch {
		case errors.Is(err, jetstreamext.ErrNoMessages):
			return nil, nil
		case errors.Is(err, jetstreamext.ErrBatchUnsupported):
			return nil, errNoBatch
		case err != nil:
			return nil, err
		}
		if pending, err = strconv.Atoi(m.Header.Get("Nats-Num-Pending")); err != nil {
			return nil, fmt.Errorf("batch read: bad Nats-Num-Pending %q", m.Header.Get("Nats-Num-Pending"))
		}
		if isMarker(m.Header) {
			continue
		}
		out = append(out, keyValue{strings.TrimPrefix(m.Subject, prefix), m.Data})
	}
	// The iterator ends quietly when the context does; only a last message with nothing
	// pending after it says the batch is whole.
	if pending != 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return nil, errors.New("batch read ended before its last message")
	}
	return out, nil
}

// isMarker tells a KV delete or purge marker (or a server's subject-delete marker) from a value.
func isMarker(h nats.Header) bool {
	return h.Get("KV-Operation") != "" || h.Get("Nats-Marker-Reason") != ""
}

// activeWatched reads the index with a watcher, for when a batch cannot. The client's
// watcher declares its initial values done once it has received as many messages as were
// pending when it started, and an entry added or removed meanwhile counts toward that, so an
// entry rewritten during the read (its old message gone, its new one not yet delivered)
// can be missed. The subjects the stream held before the watch began are the check: any of
// them the watch did not deliver is read by key.
func (s *Store) activeWatched(ctx context.Context, kv jetstream.KeyValue) ([]keyValue, error) {
	st, err := s.bucketStream(ctx)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(s.subject("active.*")))
	if err != nil {
		return nil, err
	}
	w, err := kv.Watch(ctx, "active.*", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	var out []keyValue
	seen := map[string]int{} // key → its index in out
	err = initialValues(ctx, w, func(e jetstream.KeyValueEntry) {
		if i, ok := seen[e.Key()]; ok { // rewritten while reading: the newer value
			out[i].value = e.Value()
			return
		}
		seen[e.Key()] = len(out)
		out = append(out, keyValue{e.Key(), e.Value()})
	})
	if err != nil {
		return nil, err
	}
	prefix := s.subject("")
	for subj := range info.State.Subjects {
		key := strings.TrimPrefix(subj, prefix)
		if _, ok := seen[key]; ok {
			continue
		}
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // ended meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, keyValue{key, e.Value()})
	}
	return out, nil
}

// initialValues hands each entry w delivers to fn until the client's "initial values
// done" marker (a count, not a snapshot: see activeWatched), then stops w.
func initialValues(ctx context.Context, w jetstream.KeyWatcher, fn func(jetstream.KeyValueEntry)) error {
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return errors.New("watcher closed")
			case e == nil:
				return nil
			default:
				fn(e)
			}
		}
	}
}

// PurgeDeletes removes KV delete markers older than age from the active index: versions
// before DeleteActive purged wrote one per ended deliberation, and each counts against the
// batch read's limit until it goes. It reads the index alone (nats.go's KeyValue.PurgeDeletes
// would watch every key in the bucket, the whole history, on every reconciler pass), and
// purges each marker's subject only up to the marker, so an entry written after it stays.
func (s *Store) PurgeDeletes(ctx context.Context, age time.Duration) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kv, err := s.kv(ctx)
	if err != nil {
		return err
	}
	w, err := kv.Watch(ctx, "active.*", jetstream.MetaOnly())
	if err != nil {
		return unavailable("purge delete markers", err)
	}
	var markers []jetstream.KeyValueEntry
	err = initialValues(ctx, w, func(e jetstream.KeyValueEntry) {
		if e.Operation() != jetstream.KeyValuePut && time.Since(e.Created()) >= age {
			markers = append(markers, e)
		}
	})
	if err != nil {
		return unavailable("purge delete markers", err)
	}
	if len(markers) == 0 {
		return nil
	}
	st, err := s.bucketStream(ctx)
	if err != nil {
		return err
	}
	for _, m := range markers {
		if err := st.Purge(ctx, jetstream.WithPurgeSubject(s.subject(m.Key())), jetstream.WithPurgeSequence(m.Revision()+1)); err != nil {
			return unavailable("purge delete markers", err)
		}
	}
	return nil
}

// Enqueue appends a deliberation's work message (body: the payload request JSON). The queue
// drops a second copy with the same id within its duplicate window.
func (s *Store) Enqueue(ctx context.Context, id string, body []byte) error {
	if err := s.ready(); err != nil {
		return err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	msg := nats.NewMsg(WorkSubjectPrefix + id)
	msg.Data = body
	msg.Header.Set("Content-Type", "application/json")
	end := telemetry.StartPublish(ctx, "ray_executor.work", msg.Header, attribute.String("deliberation.id", id))
	_, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(id))
	end(err)
	if err != nil {
		return unavailable("enqueue "+id, err)
	}
	return nil
}

// MaxPayload is the largest message the connected NATS server takes (its max_payload), 0
// while not connected: a work message over it can never be queued.
func (s *Store) MaxPayload() int64 { return s.nc.MaxPayload() }

// Count adds by to counter name, once per msgID (within the duplicate window).
func (s *Store) Count(ctx context.Context, name, msgID string, by int64) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	msg := nats.NewMsg(CountSubjectPrefix + name)
	msg.Header.Set("Nats-Incr", strconv.FormatInt(by, 10))
	if _, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID)); err != nil {
		return unavailable("count "+name, err)
	}
	return nil
}

// Counter adds to a counter once per message id (Store).
type Counter interface {
	Count(ctx context.Context, name, msgID string, by int64) error
}

// OwnerCounter names owner's own counter of name: name-by-<the first 8 bytes of the
// owner's SHA-256 in hex>, one subject token whatever the owner's name holds. Callers are
// named in the operator's configuration, so there are as many as it names.
func OwnerCounter(name, owner string) string {
	sum := sha256.Sum256([]byte(owner))
	return name + "-by-" + hex.EncodeToString(sum[:8])
}

// CountFor adds by to counter name and, for a deliberation with an owner, to the owner's
// own counter (OwnerCounter), each once per msgID.
func CountFor(ctx context.Context, c Counter, name, owner, msgID string, by int64) error {
	if err := c.Count(ctx, name, msgID, by); err != nil {
		return err
	}
	if owner == "" {
		return nil
	}
	return c.Count(ctx, OwnerCounter(name, owner), msgID+".owner", by)
}

// Counters reads every counter of the whole system.
func (s *Store) Counters(ctx context.Context) (map[string]int64, error) { return s.CountersOf(ctx, "") }

// CountersOf reads owner's counters (the whole system's when owner is empty), by their
// plain names: one read per counter, whatever the history.
func (s *Store) CountersOf(ctx context.Context, owner string) (map[string]int64, error) {
	if err := s.ready(); err != nil {
		return nil, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	out := map[string]int64{}
	st, err := s.js.Stream(ctx, s.cfg.CountersStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return out, nil // not provisioned yet: nothing counted
	}
	if err != nil {
		return nil, unavailable("stream "+s.cfg.CountersStream, err)
	}
	for _, name := range []string{CountSubmitted, CountCompleted, CountFailed, CountCancelled, CountDurationMS} {
		subject := CountSubjectPrefix + name
		if owner != "" {
			subject = CountSubjectPrefix + OwnerCounter(name, owner)
		}
		m, err := st.GetLastMsgForSubject(ctx, subject)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, unavailable("counter "+name, err)
		}
		var v struct {
			Val string `json:"val"`
		}
		if err := json.Unmarshal(m.Data, &v); err != nil {
			return nil, fmt.Errorf("records: counter %s: %v: %w", name, err, domain.ErrUnavailable)
		}
		n, _ := strconv.ParseInt(v.Val, 10, 64)
		out[name] = n
	}
	return out, nil
}

// Queue is what the work queue holds.
type Queue struct {
	// Waiting is the number of deliberations no executor has pulled yet.
	Waiting uint64
	// InFlight is the number pulled and not yet acknowledged.
	InFlight int
	// Oldest is when the oldest waiting one was queued (zero when none waits).
	Oldest time.Time
}

// Queue reads the work queue's state.
func (s *Store) Queue(ctx context.Context) (Queue, error) {
	if err := s.ready(); err != nil {
		return Queue{}, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	c, err := s.js.Consumer(ctx, s.cfg.WorkStream, WorkConsumer)
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) {
		return Queue{}, nil // not provisioned yet: nothing queued
	}
	if err != nil {
		return Queue{}, unavailable("consumer "+WorkConsumer, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return Queue{}, unavailable("consumer "+WorkConsumer, err)
	}
	q := Queue{Waiting: info.NumPending, InFlight: info.NumAckPending}
	if q.Waiting > 0 {
		st, err := s.js.Stream(ctx, s.cfg.WorkStream)
		if err == nil {
			m, err := st.GetMsg(ctx, info.Delivered.Stream+1, jetstream.WithGetMsgSubject(WorkSubjectPrefix+"*"))
			if err == nil {
				q.Oldest = m.Time
			}
		}
	}
	return q, nil
}

// RequestCancel tells the executor holding deliberation id to cancel it now. It is a hint:
// the record's cancel_requested is the truth, which a redelivery also sees.
func (s *Store) RequestCancel(id string) error {
	if err := s.nc.Publish(CancelSubjectPrefix+id, nil); err != nil {
		return unavailable("cancel signal "+id, err)
	}
	return nil
}

// WaitTerminal waits until the record of id has ended or ctx ends, and returns the last
// record read.
func (s *Store) WaitTerminal(ctx context.Context, id string) (domain.Record, error) {
	kv, err := s.kv(ctx)
	if err != nil {
		return domain.Record{}, err
	}
	w, err := kv.Watch(ctx, recordKey(id))
	if err != nil {
		return domain.Record{}, unavailable("watch "+id, err)
	}
	defer func() { _ = w.Stop() }()
	var last domain.Record
	for {
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return last, ctx.Err()
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if err := json.Unmarshal(e.Value(), &last); err == nil && last.Terminal() {
				return last, nil
			}
		}
	}
}

// Heartbeat is the executor's heartbeat (key "executor").
type Heartbeat struct {
	Version      string `json:"version"`
	SubmissionID string `json:"submission_id"`
	Replicas     int    `json:"replicas"`
	InFlight     int    `json:"in_flight"`
	MaxReplicas  int    `json:"max_replicas"`
	UpdatedAt    string `json:"updated_at"`
}

// Fresh reports whether the heartbeat is recent enough for the executor to count as live.
func (h Heartbeat) Fresh(now time.Time) bool {
	t := domain.ParseTime(h.UpdatedAt)
	return !t.IsZero() && now.Sub(t) < HeartbeatStale
}

// Deploy names the executor that should run (key "executor.deploy").
type Deploy struct {
	Version      string `json:"version"`
	SubmissionID string `json:"submission_id"`
	Generation   int    `json:"generation"`
	At           string `json:"at"`
	// Failures counts the generations of this version before this one that crashed in a
	// row (ended within executor.CrashWindow of their submission): the deployer's backoff.
	Failures int `json:"failures,omitempty"`
	// Previous is the generation this one replaced, kept in Ray for its logs; Retired are
	// older ones not yet deleted from Ray (still running, or Ray did not answer).
	Previous string   `json:"previous,omitempty"`
	Retired  []string `json:"retired,omitempty"`
}

// SubmissionID is a Ray submission id for an executor version's generation. It ends in
// random digits: Ray never forgets a submission id while its head lives, and two stores
// (two NATS servers, two test runs) may deploy the same version and generation to one
// cluster. The deploy key's compare-and-set, not the id, makes deployers agree.
func SubmissionID(version string, generation int) string {
	v := version
	if len(v) > 12 {
		v = v[:12]
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("ray-executor-%s-%d-%s", strings.ToLower(v), generation, hex.EncodeToString(b[:]))
}

// Heartbeat reads the executor's heartbeat; ok is false when there is none.
func (s *Store) Heartbeat(ctx context.Context) (h Heartbeat, ok bool, err error) {
	ok, err = s.getJSON(ctx, KeyExecutor, &h)
	return h, ok, err
}

// Deploy reads the deploy key and its revision (0 when absent).
func (s *Store) Deploy(ctx context.Context) (d Deploy, rev uint64, err error) {
	rev, ok, err := s.getRevised(ctx, KeyDeploy, &d)
	if !ok {
		d = Deploy{} // absent, or a bad key that the next deploy replaces
	}
	return d, rev, err
}

// SetDeploy writes the deploy key by compare-and-set at rev (0: create). ErrAlreadyExists
// when another deployer wrote it first.
func (s *Store) SetDeploy(ctx context.Context, d Deploy, rev uint64) error {
	return s.setRevised(ctx, KeyDeploy, d, rev)
}

// getRevised reads key into v and returns its revision (0 when the key is absent); ok is
// false when the key is absent or its value does not decode into v (the next
// compare-and-set at rev replaces it).
func (s *Store) getRevised(ctx context.Context, key string, v any) (rev uint64, ok bool, err error) {
	if err := s.ready(); err != nil {
		return 0, false, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kv, err := s.kv(ctx)
	if err != nil {
		return 0, false, err // no bucket: the writer waits for provisioning
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, unavailable("get "+key, err)
	}
	return e.Revision(), json.Unmarshal(e.Value(), v) == nil, nil
}

// setRevised writes v as key's JSON by compare-and-set at rev (0: create). ErrAlreadyExists
// when another writer got there first.
func (s *Store) setRevised(ctx context.Context, key string, v any, rev uint64) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kv, err := s.kv(ctx)
	if err != nil {
		return err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("records: %s: %w", key, err)
	}
	if rev == 0 {
		_, err = kv.Create(ctx, key, b)
	} else {
		_, err = kv.Update(ctx, key, b, rev)
	}
	if err != nil {
		if isWrongRevision(err) {
			return fmt.Errorf("records: %s: %w", key, domain.ErrAlreadyExists)
		}
		return unavailable("set "+key, err)
	}
	return nil
}

func (s *Store) getJSON(ctx context.Context, key string, v any) (bool, error) {
	if err := s.ready(); err != nil {
		return false, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kv, err := s.kv(ctx)
	if errors.Is(err, errNoBucket) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, unavailable("get "+key, err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return false, nil
	}
	return true, nil
}
