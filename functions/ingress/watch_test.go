package ingress

import (
	"context"
	"io"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/events"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
	"github.com/fleet-ai/ray-executor/shared/natsbus"
	"github.com/fleet-ai/ray-executor/shared/rpcevents"
)

// fakeWatcher replays a fixed list of stored events.
type fakeWatcher struct{ evs []natsbus.Stored }

func (f fakeWatcher) Watch(_ context.Context, _ string, fn func(natsbus.Stored) bool) error {
	for _, ev := range f.evs {
		if fn(ev) {
			return nil
		}
	}
	return nil
}

func stored(kind events.Kind, source string) natsbus.Stored {
	return natsbus.Stored{Event: events.Event{Type: events.TypePrefix + string(kind), Source: source}}
}

// A terminal event the deliberation's record does not bear out (a forged "cancelled" for a
// deliberation still running) is not passed on and does not end the watch; the real end is.
func TestWatchSkipsAForgedTerminalEvent(t *testing.T) {
	var reads atomic.Int32
	// Status: running at the check and at the forged event, completed at the real one.
	caller := &fakeCaller{CallFn: func(_ context.Context, _, ceType string, _ proto.Message, _ rpcevents.CallOptions, resp proto.Message) error {
		st := "running"
		if reads.Add(1) >= 3 {
			st = "completed"
		}
		proto.Merge(resp, &pb.GetDeliberationStatusResponse{Status: st})
		return nil
	}}
	w := fakeWatcher{evs: []natsbus.Stored{
		stored(events.Submitted, "ray-executor/execute"),
		stored(events.Cancelled, "mallory"),
		stored(events.Completed, "ray-executor/executor"),
	}}
	client, _ := dial(t, &Server{Caller: caller, Events: w})
	stream, err := client.WatchDeliberation(context.Background(), &pb.WatchDeliberationRequest{DeliberationId: "delib-abc"})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, resp.GetEvent().GetKind()+" from "+resp.GetEvent().GetSource())
	}
	if len(kinds) != 2 || kinds[0] != "submitted from ray-executor/execute" || kinds[1] != "completed from ray-executor/executor" {
		t.Errorf("got %v, want submitted then completed, without the forged cancelled", kinds)
	}
}
