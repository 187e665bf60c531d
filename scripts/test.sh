#!/usr/bin/env bash
# `make test`: every Go and Python test, against a real local Ray head that this script
# starts (unless one already runs) and stops again, pass or fail.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

export PATH="$root/.venv/bin:$PATH"
export NATS_SERVER_BIN="$root/bin/nats-local"

# 1. The unit and package tests, before any Ray head runs: `go test ./...` needs no Ray (the
#    tests that do carry the build tag ray, the end-to-end ones the tag e2e, in e2e/); it
#    starts its NATS servers in process. RAY_ADDRESS points at a closed port so that a head
#    left running on this machine cannot be used by accident.
echo "== go test ./... (no Ray)"
RAY_ADDRESS=http://127.0.0.1:9 go test -count=1 -timeout 20m ./...

trap 'scripts/ray-head.sh down' EXIT
scripts/ray-head.sh up

export RAY_ADDRESS="http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}"
# The head's own token (scripts/ray-head.sh), by file; a RAY_AUTH_TOKEN meant for another
# cluster must not shadow it.
unset RAY_AUTH_TOKEN
if [ -s "$root/.run/ray-auth-token" ]; then
  export RAY_AUTH_TOKEN_FILE="$root/.run/ray-auth-token"
fi

# 2. The package tests against the real Ray head (build tag ray): the Ray REST client and its
#    resilience through a proxy, the Functions Framework runner, execute's main (their
#    untagged tests run again here: they take seconds).
echo "== go test -tags ray (the packages whose tests need the Ray head)"
ray_pkgs=$(grep -rl --include='*_test.go' '^//go:build ray$' functions shared | xargs -n1 dirname | sort -u | sed 's#^#./#')
[ -n "$ray_pkgs" ] || { echo "no test carries the build tag ray: scripts/test.sh is out of date" >&2; exit 1; }
# shellcheck disable=SC2086 # one package per word
go test -count=1 -timeout 20m -tags ray $ray_pkgs

echo "== pytest (payload)"
.venv/bin/python -m pytest -q shared/executor/payload/tests

# 3. The end-to-end tests: the function binaries as processes, the embedded NATS server, and
#    the standing executor, which execute deploys on the local Ray head and the tests stop
#    when they end.
echo "== go test -tags e2e ./e2e/"
go test -count=1 -timeout 30m -tags e2e ./e2e/

# 4. Last, alone, because they stop and restart the Ray head, kill executor processes, or
#    take all of it: the Ray head stopped for 30 s under steady load, a load run
#    (LOAD_DELIBERATIONS, 60 here to keep CI short; `make bench` runs the full 200), the
#    executor job stopped and a replica killed mid-deliberation, queued work cancelled, and
#    deadlines kept while the raylet is killed and the head stopped under deliberations.
#    -v prints their figures.
echo "== go test -tags 'e2e exclusive' (Ray outage, load run, executor loss, queued cancel, cluster loss)"
LOAD_DELIBERATIONS="${LOAD_DELIBERATIONS:-60}" go test -count=1 -timeout 40m -tags 'e2e exclusive' -v \
  -run '^(TestRayOutageUnderSteadyLoad|TestLoadTwoHundredDeliberations|TestQueuedCancelNeverRunsTheDeliberation|TestStoppedExecutorJobIsResubmitted|TestReplicaKilledMidDeliberationRunsOnce|TestDeadlinesHoldThroughClusterLoss)$' ./e2e/
