#!/usr/bin/env bash
# Starts or stops the local Ray head that `make test` and `make run` use: bound to
# 127.0.0.1, dashboard (the Jobs REST API) on $RAY_DASHBOARD_PORT (8265), usage stats off,
# and token authentication ON with a token of its own.
#   scripts/ray-head.sh up     start one unless a head already answers to our token;
#                              remember that we did
#   scripts/ray-head.sh down   stop it, only if `up` started it, and forget its token
#   scripts/ray-head.sh stop   stop whatever Ray runs here (the outage test's fault), keeping
#                              the marker and the token so a later `up` brings back the same
#                              head's credentials and a later `down` still cleans up
#
# The token: Ray's processes on the machine can reach the GCS and raylet on every interface,
# so a head without authentication lets anyone who reaches the machine run code on it. `up`
# generates a random token per head into $RAY_HEAD_TOKEN_FILE (.run/ray-auth-token, mode
# 0600), starts the head with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH pointing at it, and
# never prints it. Everything that talks to this head gets the file as RAY_AUTH_TOKEN_FILE
# (scripts/test.sh, scripts/run.sh). A ~/.ray/auth_token left by other Ray use is neither
# read (RAY_AUTH_TOKEN_PATH takes precedence over it; RAY_AUTH_TOKEN is unset for the head)
# nor written.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
port="${RAY_DASHBOARD_PORT:-8265}"
marker="$root/.ray-head-started"
token_file="${RAY_HEAD_TOKEN_FILE:-$root/.run/ray-auth-token}"
header_file="$token_file.header"
url="http://127.0.0.1:$port/api/version"

# probe prints the dashboard's HTTP status for /api/version with our token (000: no answer).
# The token goes to curl in a header file, never on its command line.
probe() {
  local args=(-sS -o /dev/null -w '%{http_code}' -m 2)
  [ -s "$header_file" ] && args+=(-H "@$header_file")
  curl "${args[@]}" "$url" 2>/dev/null || true
}

auth_refused() { # status
  case "$1" in
  401) echo "ray-head: the Ray dashboard on 127.0.0.1:$port requires a token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE" >&2 ;;
  403) echo "ray-head: the Ray dashboard on 127.0.0.1:$port refused the token: RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE is wrong for this cluster" >&2 ;;
  *) return 1 ;;
  esac
  echo "ray-head: that head was not started by this checkout; stop it ('ray stop') or use another RAY_DASHBOARD_PORT" >&2
  return 0
}

new_token() {
  mkdir -p "$(dirname "$token_file")"
  rm -f "$token_file" "$header_file"
  (
    umask 077
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$token_file"
    printf 'Authorization: Bearer %s\n' "$(cat "$token_file")" > "$header_file"
  )
}

case "${1:-}" in
up)
  code=$(probe)
  if [ "$code" = 200 ]; then
    echo "ray-head: a Ray head already answers on 127.0.0.1:$port; using it"
    exit 0
  fi
  if auth_refused "$code"; then exit 1; fi
  [ -x "$venv/bin/ray" ] || { echo "ray-head: $venv/bin/ray is missing; run 'make venv'" >&2; exit 1; }
  # A head we stopped as a fault (marker kept) comes back with the same token, so processes
  # that read the token file at start keep working; any other start gets a new one.
  if [ ! -f "$marker" ] || [ ! -s "$token_file" ] || [ ! -s "$header_file" ]; then
    new_token
  fi
  # Job drivers run `python` from the raylet's PATH: it must be the venv's, which has ray.
  export PATH="$venv/bin:$PATH"
  export RAY_USAGE_STATS_ENABLED=0
  # The dashboard (all we talk to) listens on 127.0.0.1 only. Ray's own processes advertise
  # the machine's address whatever --node-ip-address says: Ray rewrites 127.0.0.1 to it,
  # which is why the token matters.
  env -u RAY_AUTH_TOKEN RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token_file" \
    "$venv/bin/ray" start --head \
    --dashboard-host=127.0.0.1 --dashboard-port="$port" \
    --include-dashboard=true --disable-usage-stats \
    --num-cpus="${RAY_NUM_CPUS:-4}" >"$root/.ray-head.log" 2>&1 || {
      echo "ray-head: 'ray start' failed:" >&2; tail -30 "$root/.ray-head.log" >&2; exit 1; }
  touch "$marker"
  for _ in $(seq 1 120); do
    code=$(probe)
    if [ "$code" = 200 ]; then echo "ray-head: up on 127.0.0.1:$port (token authentication on)"; exit 0; fi
    if auth_refused "$code"; then exit 1; fi
    sleep 0.5
  done
  echo "ray-head: the dashboard did not answer on $url within 60 s (last HTTP status: $code)" >&2
  exit 1
  ;;
down)
  if [ -f "$marker" ]; then
    "$venv/bin/ray" stop --force >/dev/null 2>&1 || true
    rm -f "$marker" "$token_file" "$header_file"
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
