#!/usr/bin/env bash
# scripts/stale-ray-home.sh <command...>: runs the command as on a machine where Ray was used
# before: HOME is a fresh directory whose ~/.ray/auth_token holds a token of some other
# cluster (what any earlier local `ray.init()` leaves). Ray reads that file by default and
# would switch a head to it; `make test` and `make run` must neither break on it nor read,
# overwrite or remove it. Fails if the command fails or the file changed. Go's and pip's
# caches stay where they were, so nothing is downloaded again.
set -euo pipefail
[ "$#" -gt 0 ] || { echo "usage: $0 <command...>" >&2; exit 2; }
export GOPATH="$(go env GOPATH)" GOMODCACHE="$(go env GOMODCACHE)" GOCACHE="$(go env GOCACHE)"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}"
home=$(mktemp -d /tmp/ray-executor-home-XXXXXX)
mkdir -p "$home/.ray"
(umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$home/.ray/auth_token")
before=$(sha256sum < "$home/.ray/auth_token")
echo "stale-ray-home: HOME=$home with a stale ~/.ray/auth_token; running: $*"
status=0
HOME="$home" "$@" || status=$?
if [ ! -f "$home/.ray/auth_token" ] || [ "$(sha256sum < "$home/.ray/auth_token")" != "$before" ]; then
  echo "stale-ray-home: ~/.ray/auth_token was changed or removed by: $*" >&2
  status=1
fi
rm -rf "$home"
exit $status
