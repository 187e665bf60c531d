package rpcevents

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/fleet-ai/ray-executor/shared/domain"
	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
)

func executeDescriptor() *pb.ExecuteDeliberationRequest { return &pb.ExecuteDeliberationRequest{} }

// repeatedEmpty is n empty entries of field num (a message field), as a hostile caller
// would send to make the decoder build n structs.
func repeatedEmpty(num protowire.Number, n int) []byte {
	var b []byte
	for range n {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendVarint(b, 0)
	}
	return b
}

func TestCheckWireShape(t *testing.T) {
	md := executeDescriptor().ProtoReflect().Descriptor()
	real := &pb.ExecuteDeliberationRequest{TaskId: "t", TaskDescription: strings.Repeat("long prompt ", 10000),
		Agents: []*pb.Agent{{Id: "a1", Role: "dev"}, {Id: "a2", Role: "qa"}}}
	good, err := proto.Marshal(real)
	if err != nil {
		t.Fatal(err)
	}
	agents := md.Fields().ByName("agents").Number()
	truncated := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.BytesType), 1000)
	group := protowire.AppendTag(nil, 99, protowire.StartGroupType)
	for _, tc := range []struct {
		name string
		data []byte
		want string // "" for no error
	}{
		{"a real request, a long prompt", good, ""},
		{"at the bound", repeatedEmpty(agents, MaxElements), ""},
		{"one entry over", repeatedEmpty(agents, MaxElements+1), "fields in all"},
		{"a million empty agents", repeatedEmpty(agents, 1_000_000), "(32769 of them in agents)"},
		// Unknown field numbers are not descended into, but each still counts.
		{"unknown fields", repeatedEmpty(999, MaxElements+1), "fields in all"},
		{"malformed is the decoder's to describe", truncated, ""},
		{"groups", group, "groups"},
	} {
		err := CheckWireShape(BytesSource(tc.data), len(tc.data), md)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: got %v, want accepted", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, domain.ErrInvalid)):
			t.Errorf("%s: got %v, want an invalid-argument error saying %q", tc.name, err, tc.want)
		}
	}
	// Fields inside nested messages count too: agents of agents' fields.
	var nested []byte
	for range MaxElements/2 + 1 {
		inner := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "a")
		nested = protowire.AppendBytes(protowire.AppendTag(nested, agents, protowire.BytesType), inner)
	}
	if err := CheckWireShape(BytesSource(nested), len(nested), md); err == nil {
		t.Error("fields nested in agents were not counted")
	}
}

func TestCheckJSONShape(t *testing.T) {
	md := executeDescriptor().ProtoReflect().Descriptor()
	many := `{"task_id":"t","agents":[` + strings.TrimSuffix(strings.Repeat("{},", 3*MaxElements), ",") + `]}`
	deep := strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1)
	for _, tc := range []struct {
		name, data, want string
	}{
		{"a real request", `{"task_id":"t","task_description":"` + strings.Repeat("x", 100000) + `","agents":[{"id":"a1"}]}`, ""},
		{"many empty agents", many, "of them in agents)"},
		{"deep", `{"agents":` + deep + `}`, "more than 32 deep"},
		{"malformed is the decoder's", `{"task_id":`, ""},
	} {
		err := CheckJSONShape([]byte(tc.data), md)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: got %v, want accepted", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), string(md.FullName()))):
			t.Errorf("%s: got %v, want an error naming %s and saying %q", tc.name, err, md.FullName(), tc.want)
		}
	}
}

// The shape check's cost on a real request, beside decoding the same bytes (the baseline,
// in the same run): `go test -run '^$' -bench 'ShapeVsDecode' ./shared/rpcevents/`.
func BenchmarkShapeVsDecode(b *testing.B) {
	req := &pb.ExecuteDeliberationRequest{TaskId: "task-1", TaskDescription: strings.Repeat("Decide how to shard the user table. ", 200),
		Role: "architect", VllmUrl: "http://127.0.0.1:8000/v1", VllmModel: "m",
		Constraints: &pb.TaskConstraints{StoryId: "s", PlanId: "p", TimeoutSeconds: 60, Metadata: map[string]string{"task_type": "x", "k": "v"}}}
	for i := range 3 {
		req.Agents = append(req.Agents, &pb.Agent{Id: "a" + strconv.Itoa(i), Role: "dev", Model: "m", PromptTemplate: "{task}"})
	}
	data, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	md := req.ProtoReflect().Descriptor()
	b.Run("shape", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if err := CheckWireShape(BytesSource(data), len(data), md); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			var out pb.ExecuteDeliberationRequest
			if err := proto.Unmarshal(data, &out); err != nil {
				b.Fatal(err)
			}
		}
	})
}
