#!/usr/bin/env bash
# scripts/run-smoke.sh: `make run` as a new user runs it (CI runs it under
# scripts/stale-ray-home.sh, so on a machine where Ray was used before). It waits for the
# system to come up, checks that the local Ray head has token authentication on (an
# unauthenticated job submission is refused) and that the token was never printed, runs
# one deliberation through the gRPC ingress to `completed` and one with bin/rexctl (the
# CLI), then stops `make run` with Ctrl-C (SIGINT) and checks that the Ray head went with
# it. Needs the ports `make run` uses (8265, 8081-8083, 50056, 4222, 8000) free.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=$(mktemp)
fail() { echo "run-smoke: $*" >&2; echo "--- make run output:" >&2; cat "$out" >&2; exit 1; }

if curl -s -m 2 -o /dev/null http://127.0.0.1:8265/api/version; then
  echo "run-smoke: something already answers on 127.0.0.1:8265; stop it first" >&2
  exit 1
fi
# setsid: make run and everything it starts form one process group, signalled like a
# terminal's Ctrl-C would.
setsid make --no-print-directory run > "$out" 2>&1 < /dev/null &
run_pid=$!
cleanup() {
  if kill -0 "$run_pid" 2>/dev/null; then kill -INT -- "-$run_pid" 2>/dev/null || true; wait "$run_pid" 2>/dev/null || true; fi
  rm -f "$out"
}
trap cleanup EXIT

for _ in $(seq 1 600); do
  grep -q '^run: up\.' "$out" && break
  kill -0 "$run_pid" 2>/dev/null || fail "make run exited before it was up"
  sleep 0.5
done
grep -q '^run: up\.' "$out" || fail "make run was not up within 300 s"
echo "run-smoke: make run is up"

[ -s .run/ray-auth-token ] || fail "no .run/ray-auth-token: the local head has no token of its own"
[ "$(stat -c %a .run/ray-auth-token)" = 600 ] || fail ".run/ray-auth-token is mode $(stat -c %a .run/ray-auth-token), want 600"
code=$(curl -s -o /dev/null -w '%{http_code}' -m 5 -X POST -H 'Content-Type: application/json' \
  -d '{"entrypoint":"echo should-never-run"}' http://127.0.0.1:8265/api/jobs/)
[ "$code" = 401 ] || fail "an unauthenticated job submission got HTTP $code, want 401"
echo "run-smoke: the local Ray head refuses an unauthenticated job submission (401)"

req='{"task_id":"smoke-1","task_description":"Pick a database for the audit log","role":"architect",
  "constraints":{"story_id":"s1","timeout_seconds":120},"vllm_url":"http://127.0.0.1:8000","vllm_model":"m",
  "agents":[{"id":"a1","role":"architect","model":"m"}]}'
resp=$(bin/grpcurl -plaintext -max-time 30 -d "$req" 127.0.0.1:50056 fleet.ray_executor.v1.RayExecutorService/ExecuteDeliberation) ||
  fail "ExecuteDeliberation failed: $resp"
id=$(printf '%s' "$resp" | python3 -c 'import json,sys; print(json.load(sys.stdin)["deliberationId"])')
echo "run-smoke: submitted $id"
st=""
for _ in $(seq 1 240); do
  st=$(bin/grpcurl -plaintext -max-time 10 -d "{\"deliberation_id\":\"$id\"}" 127.0.0.1:50056 \
    fleet.ray_executor.v1.RayExecutorService/GetDeliberationStatus | python3 -c 'import json,sys; print(json.load(sys.stdin).get("status",""))') || true
  case "$st" in completed|failed|cancelled) break ;; esac
  sleep 0.5
done
[ "$st" = completed ] || fail "deliberation $id ended '$st', want completed"
echo "run-smoke: $id completed"

# The CLI as a script uses it against make run: submit, watch to the end (event lines: stdout
# is no terminal), exit 0.
cli_out=$(bin/rexctl submit --task-id smoke-2 -d "Pick a queue for the audit log" --role architect --story-id s1 \
  --vllm-url http://127.0.0.1:8000 --model m --agents 2 --wait --wait-timeout 120s 2>&1) || fail "rexctl submit --wait exited $?: $cli_out"
printf '%s\n' "$cli_out" | grep -q ' completed delib-' || fail "rexctl's watch did not end completed: $cli_out"
echo "run-smoke: rexctl submitted a deliberation and watched it to completed"

token=$(cat .run/ray-auth-token)
if grep -rqF "$token" "$out" .run/*.log .ray-head.log 2>/dev/null; then fail "the Ray token was printed"; fi
unset token

kill -INT -- "-$run_pid"
for _ in $(seq 1 120); do kill -0 "$run_pid" 2>/dev/null || break; sleep 0.5; done
if kill -0 "$run_pid" 2>/dev/null; then fail "make run did not stop within 60 s of Ctrl-C"; fi
if curl -s -m 2 -o /dev/null http://127.0.0.1:8265/api/version; then fail "the Ray head still answers after make run stopped"; fi
[ ! -e .run/ray-auth-token ] || fail "the Ray token file outlived its head"
echo "run-smoke: make run stopped cleanly"
