package records

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fleet-ai/ray-executor/shared/domain"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// BenchmarkUnindex is what taking an ended deliberation out of the active index costs, the
// way DeleteActive does it (a stream purge of its subject, no marker left) against a KV
// delete (a marker that stays until PurgeDeletes), each after the record and the entry were
// written, as intake writes them, so that the bucket's blocks hold records as in production.
//
//	go test -run '^$' -bench Unindex -benchtime 3s -count 3 ./shared/records/
func BenchmarkUnindex(b *testing.B) {
	bus := testenv.NATS(b)
	s := New(bus.Conn(), bus.JetStream(), Config{})
	ctx := context.Background()
	if err := s.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	kv, _ := s.kv(ctx)
	req := domain.Request{Kind: domain.KindDeliberation, TaskID: "t", Agents: []domain.Agent{{ID: "a1"}}}
	i := 0
	for _, how := range []string{"purge", "delete"} {
		b.Run(how, func(b *testing.B) {
			for b.Loop() {
				i++
				id := fmt.Sprintf("%s%d", how, i)
				rec := domain.NewRecord(id, req, "h", "", "", time.Now())
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
