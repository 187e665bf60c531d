package ray

import (
	"testing"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

func TestDeliberationJobReservesTheDriversShare(t *testing.T) {
	r := domain.Request{Kind: domain.KindDeliberation, TaskID: "t", TaskDescription: "d", Role: "dev",
		Agents: []domain.Agent{{ID: "a", Role: "dev", Model: "m"}}, VLLMURL: "http://llm", VLLMModel: "m"}
	opts := JobOptions{WorkingDir: "gcs://_ray_pkg_x.zip", EntrypointNumCPUs: 0.5,
		EntrypointResources: map[string]float64{"deliberation_slot": 1}}
	job, err := DeliberationJob("delib-adm", r, "", opts)
	if err != nil {
		t.Fatal(err)
	}
	sub := job.Submit
	if sub.EntrypointNumCPUs != 0.5 || sub.EntrypointResources["deliberation_slot"] != 1 {
		t.Errorf("got entrypoint cpus %v resources %v", sub.EntrypointNumCPUs, sub.EntrypointResources)
	}
	none, _ := DeliberationJob("delib-adm", r, "", JobOptions{WorkingDir: opts.WorkingDir})
	if none.Submit.EntrypointNumCPUs != 0 || none.Submit.EntrypointResources != nil {
		t.Errorf("without options got %v %v, want no reservation", none.Submit.EntrypointNumCPUs, none.Submit.EntrypointResources)
	}
}
