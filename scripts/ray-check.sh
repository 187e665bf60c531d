#!/usr/bin/env bash
# scripts/ray-check.sh <dashboard-address>: does that Ray dashboard answer us? With
# RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE set, the token is sent (through a header file only
# this user can read, never on a command line). A refusal is said at once and by its cause:
#   401 -> the dashboard requires a token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE
#   403 -> the dashboard refused the token: it is wrong for this cluster
# Otherwise it waits up to RAY_CHECK_SECONDS (30) for an answer.
set -euo pipefail
addr="${1:?usage: $0 <ray dashboard address>}"
addr="${addr%/}"
case "$addr" in
http://*|https://*) ;;
*) echo "ray-check: RAY_ADDRESS=$addr must be the dashboard's http(s)://<head>:8265 address" >&2; exit 1 ;;
esac
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=(-sS -o /dev/null -w '%{http_code}' -m 3)
token="${RAY_AUTH_TOKEN:-}"
if [ -z "$token" ] && [ -n "${RAY_AUTH_TOKEN_FILE:-}" ]; then
  [ -r "$RAY_AUTH_TOKEN_FILE" ] || { echo "ray-check: RAY_AUTH_TOKEN_FILE=$RAY_AUTH_TOKEN_FILE cannot be read" >&2; exit 1; }
  token=$(tr -d ' \t\r\n' < "$RAY_AUTH_TOKEN_FILE")
fi
if [ -n "$token" ]; then
  (umask 077 && printf 'Authorization: Bearer %s\n' "$token" > "$tmp/header")
  args+=(-H "@$tmp/header")
fi
unset token
code=000
for _ in $(seq 1 "${RAY_CHECK_SECONDS:-30}"); do
  code=$(curl "${args[@]}" "$addr/api/version" 2>/dev/null || true)
  case "$code" in
  200) echo "ray-check: the Ray dashboard at $addr answers"; exit 0 ;;
  401) echo "ray-check: the Ray dashboard at $addr requires a token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE" >&2; exit 1 ;;
  403) echo "ray-check: the Ray dashboard at $addr refused the token: RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_FILE is wrong for this cluster" >&2; exit 1 ;;
  esac
  sleep 1
done
echo "ray-check: the Ray dashboard at $addr did not answer within ${RAY_CHECK_SECONDS:-30} s (last HTTP status: $code)" >&2
exit 1
