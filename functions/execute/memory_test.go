package execute

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/fleet-ai/ray-executor/shared/rpcevents"
	"github.com/fleet-ai/ray-executor/shared/testenv"
)

// The execute binary, its internal credential required, takes 8 concurrent 1 MiB request
// events of hundreds of thousands of empty agents, three rounds, from a caller holding the
// credential, refuses each as invalid before decoding it, and stays under 64 MiB resident
// at its peak (VmHWM, the kernel's accounting of the process).
func TestHostileEventsStayUnder64MiB(t *testing.T) {
	const limit, token = 64 << 20, "internal-token-0123456789abcdef"
	p := testenv.StartBinary(t, "./cmd", "INTERNAL_TOKEN="+token, "NATS_URL=nats://127.0.0.1:1",
		"RAY_ADDRESS=http://127.0.0.1:1", "EXECUTOR_DEPLOY=false")
	var body bytes.Buffer
	body.WriteString(`{"task_id":"flood","agents":[{}`)
	for body.Len() < 1<<20-8 {
		body.WriteString(`,{}`)
	}
	body.WriteString(`]}`)
	flood := body.Bytes()
	_, before := p.Memory(t)
	client := &http.Client{}
	for round := range 3 {
		var wg sync.WaitGroup
		errs := make(chan string, 8)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest(http.MethodPost, "http://"+p.Addr+"/", bytes.NewReader(flood))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+token)
				req.Header.Set("Ce-Specversion", "1.0")
				req.Header.Set("Ce-Type", rpcevents.TypeExecuteDeliberation)
				req.Header.Set("Ce-Source", "memory-test")
				req.Header.Set("Ce-Id", fmt.Sprintf("flood-%d-%d", round, i))
				resp, err := client.Do(req)
				if err != nil {
					errs <- err.Error()
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "fields in all") {
					errs <- fmt.Sprintf("%s %s", resp.Status, b)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Errorf("round %d: got %s, want 400 saying fields in all", round, e)
		}
	}
	rss, peak := p.Memory(t)
	t.Logf("execute resident: %d MiB before, peak %d MiB, %d MiB after 24 hostile 1 MiB events", before>>20, peak>>20, rss>>20)
	if peak > limit {
		t.Errorf("execute peaked at %d MiB resident, over %d MiB", peak>>20, limit>>20)
	}
}
