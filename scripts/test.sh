#!/usr/bin/env bash
# `make test`: every Go and Python test, against a real local Ray head that this script
# starts (unless one already runs) and stops again, pass or fail.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

trap 'scripts/ray-head.sh down' EXIT
scripts/ray-head.sh up

export RAY_ADDRESS="http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}"
# The head's own token (scripts/ray-head.sh), by file; a RAY_AUTH_TOKEN meant for another
# cluster must not shadow it.
unset RAY_AUTH_TOKEN
if [ -s "$root/.run/ray-auth-token" ]; then
  export RAY_AUTH_TOKEN_FILE="$root/.run/ray-auth-token"
fi
export PATH="$root/.venv/bin:$PATH"

echo "== go test"
go test -count=1 -timeout 20m ./...

export NATS_SERVER_BIN="$root/bin/nats-local"
echo "== pytest (payload)"
.venv/bin/python -m pytest -q shared/ray/payload/tests

# Last, alone, because they stop and restart the Ray head or take all of it: the Ray head
# stopped for 30 s under steady load, a load run (LOAD_DELIBERATIONS, 60 here to keep CI
# short; `make bench` runs the full 200), and deliberations cancelled while one reserves
# every CPU. -v prints their figures.
echo "== go test -tags exclusive (Ray outage, load run, queued cancel)"
LOAD_DELIBERATIONS="${LOAD_DELIBERATIONS:-60}" go test -count=1 -timeout 25m -tags exclusive -v \
  -run '^(TestRayOutageUnderSteadyLoad|TestLoadTwoHundredDeliberations|TestQueuedCancelNeverRunsTheDeliberation)$' ./functions/e2e/
