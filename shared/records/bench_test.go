package records

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// BenchmarkActiveIndex reads an index of 200 active deliberations (issue 11's figure) both
// ways Active can: the one-request batch it uses, and the watcher it falls back to above
// 1,024 entries (a consumer per read, plus the subject list that checks it).
//
//	go test -run '^$' -bench ActiveIndex ./shared/records/
func BenchmarkActiveIndex(b *testing.B) {
	s, ctx := benchStore(b)
	for i := range 200 {
		if err := s.PutActive(ctx, benchRecord(fmt.Sprintf("d%03d", i)).Active()); err != nil {
			b.Fatal(err)
		}
	}
	kv, err := s.kv(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		read func() ([]keyValue, error)
	}{
		{"batch", func() ([]keyValue, error) { return s.activeBatch(ctx) }},
		{"watched", func() ([]keyValue, error) { return s.activeWatched(ctx, kv) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				got, err := tc.read()
				if err != nil || len(got) != 200 {
					b.Fatalf("got %d entries, %v; want 200", len(got), err)
				}
			}
		})
	}
}

// BenchmarkUnindex is what taking an ended deliberation out of the active index costs, the
// way DeleteActive does it (a stream purge of its subject, no marker left) against a KV
// delete (a marker that stays until PurgeDeletes), each after the record and the entry were
// written, as intake writes them, so that the bucket's blocks hold records as in production.
//
//	go test -run '^$' -bench Unindex -benchtime 3s -count 3 ./shared/records/
func BenchmarkUnindex(b *testing.B) {
	s, ctx := benchStore(b)
	kv, _ := s.kv(ctx)
	i := 0
	for _, how := range []string{"purge", "delete"} {
		b.Run(how, func(b *testing.B) {
			for b.Loop() {
				i++
				id := fmt.Sprintf("%s%d", how, i)
				rec := benchRecord(id)
				if err := s.Create(ctx, rec); err != nil {
					b.Fatal(err)
				}
				if err := s.PutActive(ctx, rec.Active()); err != nil {
					b.Fatal(err)
				}
				var err error
				if how == "purge" {
					err = s.DeleteActive(ctx, id)
				} else {
					err = kv.Delete(ctx, activeKey(id))
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchStore is a provisioned store on a fresh embedded NATS server.
func benchStore(b *testing.B) (*Store, context.Context) {
	bus := testenv.NATS(b)
	s := New(bus.Conn(), bus.JetStream(), Config{})
	ctx := context.Background()
	if err := s.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	return s, ctx
}

func benchRecord(id string) domain.Record {
	req := domain.Request{Kind: domain.KindDeliberation, TaskID: "t", Agents: []domain.Agent{{ID: "a1"}}}
	return domain.NewRecord(id, req, "h", "", "", time.Now())
}
