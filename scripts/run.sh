#!/usr/bin/env bash
# `make run`: the whole system on this machine, in the foreground until Ctrl-C (or SIGTERM),
# then everything this script started is stopped again, the Ray head included.
#   Ray head        127.0.0.1:8265 (dashboard / Jobs API), token auth on (.run/ray-auth-token);
#                   with RAY_ADDRESS set, that cluster instead (RAY_AUTH_TOKEN(_FILE) if it
#                   uses token auth) and no local head
#   execute         127.0.0.1:8081
#   status          127.0.0.1:8082
#   list            127.0.0.1:8083
#   ingress (gRPC)  127.0.0.1:50056
#   NATS+JetStream  127.0.0.1:4222, storage in .data/nats
#   LLM stand-in    127.0.0.1:8000, only when LLM_URL is unset
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p .run
pids=()

cleanup() {
  trap - EXIT INT TERM
  echo
  echo "run: stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${managed_head:-false}" = true ]; then scripts/ray-head.sh down; fi
}
trap cleanup EXIT
trap 'exit 0' INT TERM

make --no-print-directory build
if [ -n "${RAY_ADDRESS:-}" ]; then
  # An existing cluster: its dashboard, with its token (RAY_AUTH_TOKEN or
  # RAY_AUTH_TOKEN_FILE) if it uses token authentication. Checked once here, so a refused
  # token is said at once rather than after every function's readiness times out.
  scripts/ray-check.sh "$RAY_ADDRESS"
  managed_head=false
else
  managed_head=true
  scripts/ray-head.sh up
  export RAY_ADDRESS="http://127.0.0.1:8265"
  # The local head's own token, by file (scripts/ray-head.sh); a RAY_AUTH_TOKEN meant for
  # another cluster must not shadow it.
  unset RAY_AUTH_TOKEN
  [ -s "$root/.run/ray-auth-token" ] && export RAY_AUTH_TOKEN_FILE="$root/.run/ray-auth-token"
fi
export HOST=127.0.0.1
export NATS_URL="nats://127.0.0.1:4222"

mkdir -p .data/nats
bin/nats-local -addr 127.0.0.1:4222 -store .data/nats > .run/nats.log 2>&1 &
pids+=($!)

if [ -z "${LLM_URL:-}" ]; then
  bin/llm-standin -addr 127.0.0.1:8000 > .run/llm-standin.log 2>&1 &
  pids+=($!)
  LLM_URL=http://127.0.0.1:8000
  cat <<'TXT'
run: ***************************************************************************
run: * No LLM_URL set: started the LLM STAND-IN on 127.0.0.1:8000.            *
run: * Its answers are canned text, not a model's. Set LLM_URL to a real      *
run: * OpenAI-compatible endpoint (vLLM) and use it as vllm_url in requests.  *
run: ***************************************************************************
TXT
fi

# Requests may only aim the workers at the configured LLM endpoint (SSRF guard).
export LLM_ENDPOINT_ALLOWLIST="${LLM_ENDPOINT_ALLOWLIST:-$LLM_URL}"

# The functions' internal credential: a fresh random one per run, in a file only this user
# can read, unless one is given. The ingress presents it; curl needs it too (README).
if [ -z "${INTERNAL_TOKEN:-}" ] && [ -z "${INTERNAL_TOKEN_FILE:-}" ]; then
  rm -f .run/internal-token
  (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > .run/internal-token)
  export INTERNAL_TOKEN_FILE="$root/.run/internal-token"
fi

start() { # name port; metrics on the next port from 9460
  PORT="$2" METRICS_PORT="${METRICS_PORT_BASE:-9460}" "bin/$1" > ".run/$1.log" 2>&1 &
  pids+=($!)
  METRICS_PORT_BASE=$(( ${METRICS_PORT_BASE:-9460} + 1 ))
}
# Each process serves Prometheus text on its own metrics port (9460-9463); with
# OTEL_EXPORTER_OTLP_ENDPOINT set in the environment, traces and metrics go there too.
start execute 8081
start status 8082
RECONCILE_INTERVAL=30s start list 8083
EXECUTE_URL=http://127.0.0.1:8081 STATUS_URL=http://127.0.0.1:8082 LIST_URL=http://127.0.0.1:8083 \
  start ingress 50056

for port in 8081 8082 8083; do
  for _ in $(seq 1 100); do
    curl -fsS -m 1 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS -m 1 "http://127.0.0.1:$port/readyz" >/dev/null || { echo "run: function on :$port is not ready; see .run/*.log" >&2; exit 1; }
done
for _ in $(seq 1 100); do
  bin/grpc-health-probe -addr 127.0.0.1:50056 >/dev/null 2>&1 && break
  sleep 0.1
done
bin/grpc-health-probe -addr 127.0.0.1:50056 >/dev/null 2>&1 || { echo "run: ingress is not serving; see .run/ingress.log" >&2; exit 1; }

# The standing executor: execute submitted it to the Ray head as one long-running job at
# start; wait for its first heartbeat (GetStatus's "executor" component).
echo "run: waiting for the executor on the Ray head (execute deploys it; a cold start takes ~10-60 s)"
executor=""
for _ in $(seq 1 240); do
  executor=$(bin/grpcurl -plaintext -d '{}' 127.0.0.1:50056 fleet.ray_executor.v1.RayExecutorService/GetStatus 2>/dev/null |
    tr -d '\n' | grep -o '"name": *"executor", *"status": *"healthy", *"message": *"[^"]*"' || true)
  [ -n "$executor" ] && break
  sleep 0.5
done
[ -n "$executor" ] || { echo "run: the executor did not start on Ray; see .run/execute.log and the Ray dashboard's jobs" >&2; exit 1; }
echo "run: the executor runs on the Ray head: ${executor##*\"message\": \"}" | sed 's/"$//'

cat <<TXT
run: up. gRPC on 127.0.0.1:50056, functions on :8081-8083, NATS on :4222, logs in .run/.
run: metrics (Prometheus text): curl 127.0.0.1:9460/metrics (execute), :9461 (status), :9462 (list), :9463 (ingress).
run: the CLI: bin/rexctl --help (REX_ADDRESS=127.0.0.1:50056).
run: the functions want -H "Authorization: Bearer \$(cat .run/internal-token)" (unless you set INTERNAL_TOKEN).
run: LLM endpoint for requests: $LLM_URL
run: try it (README.md, "Quick start"):
  bin/grpcurl -plaintext -d '{"task_id":"t1","task_description":"Pick a database","role":"architect",
    "constraints":{"story_id":"s1"},"vllm_url":"$LLM_URL","vllm_model":"m",
    "agents":[{"id":"a1","role":"architect","model":"m"}]}' \\
    127.0.0.1:50056 fleet.ray_executor.v1.RayExecutorService/ExecuteDeliberation
run: watch it:  bin/grpcurl -plaintext -d '{"deliberation_id":"<id>"}' 127.0.0.1:50056 fleet.ray_executor.v1.RayExecutorService/WatchDeliberation
run: Ctrl-C stops everything.
TXT
wait -n "${pids[@]}" || true
echo "run: a process exited; see .run/*.log" >&2
exit 1
