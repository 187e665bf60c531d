#!/usr/bin/env bash
# Starts or stops the local Ray head that `make test` and `make run` use: bound to
# 127.0.0.1, dashboard (the Jobs REST API) on $RAY_DASHBOARD_PORT (8265), usage stats off.
#   scripts/ray-head.sh up     start one unless a head already answers; remember if we did
#   scripts/ray-head.sh down   stop it, only if `up` started it
#   scripts/ray-head.sh stop   stop whatever Ray runs here (the outage test's fault), keeping
#                              the marker so a later `up` + `down` pair still cleans up
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
port="${RAY_DASHBOARD_PORT:-8265}"
marker="$root/.ray-head-started"
url="http://127.0.0.1:$port/api/version"

answers() { curl -fsS -m 2 "$url" >/dev/null 2>&1; }

case "${1:-}" in
up)
  if answers; then
    echo "ray-head: a Ray head already answers on 127.0.0.1:$port; using it"
    exit 0
  fi
  [ -x "$venv/bin/ray" ] || { echo "ray-head: $venv/bin/ray is missing; run 'make venv'" >&2; exit 1; }
  # Job drivers run `python` from the raylet's PATH: it must be the venv's, which has ray.
  export PATH="$venv/bin:$PATH"
  export RAY_USAGE_STATS_ENABLED=0
  # The dashboard (all we talk to) listens on 127.0.0.1 only. Ray's own processes advertise
  # the machine's address whatever --node-ip-address says: Ray rewrites 127.0.0.1 to it.
  "$venv/bin/ray" start --head \
    --dashboard-host=127.0.0.1 --dashboard-port="$port" \
    --include-dashboard=true --disable-usage-stats \
    --num-cpus="${RAY_NUM_CPUS:-4}" >"$root/.ray-head.log" 2>&1 || {
      echo "ray-head: 'ray start' failed:" >&2; tail -30 "$root/.ray-head.log" >&2; exit 1; }
  touch "$marker"
  for _ in $(seq 1 120); do
    if answers; then echo "ray-head: up on 127.0.0.1:$port"; exit 0; fi
    sleep 0.5
  done
  echo "ray-head: the dashboard did not answer on $url within 60 s" >&2
  exit 1
  ;;
down)
  if [ -f "$marker" ]; then
    "$venv/bin/ray" stop --force >/dev/null 2>&1 || true
    rm -f "$marker"
    echo "ray-head: stopped"
  fi
  ;;
stop)
  "$venv/bin/ray" stop --force >/dev/null 2>&1 || true
  echo "ray-head: stopped (outage)"
  ;;
*)
  echo "usage: $0 up|down|stop" >&2
  exit 2
  ;;
esac
