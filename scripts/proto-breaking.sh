#!/usr/bin/env bash
# `make breaking`: the API cannot break by accident. `buf breaking` (rules WIRE_JSON, from
# buf.yaml: wire and JSON compatibility) checks
#   1. the work tree against HEAD (uncommitted edits; nothing to compare in CI's clean clone);
#   2. every commit that changed a .proto under specs/ against its parent, from HEAD back to
#      the first one, whatever branch is checked out. CI runs on a fresh clone of main, where
#      "against main" would compare the proto with itself and "against HEAD~1" would miss a
#      break in any but the last of several commits submitted together; the walk covers both
#      (a few tenths of a second per commit that touched the proto);
#   3. the work tree against the proto as first committed, the one wire-compatible with the
#      original Python service (COMPAT.md), so nothing can drift away from it either;
#   4. with BUF_AGAINST set, the work tree against that buf input as well (on a branch, e.g.
#      BUF_AGAINST='.git#branch=main').
# Needs the repository's history: a shallow clone is deepened from its origin first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
buf="$root/bin/buf"
protos=':(glob)specs/**/*.proto'

if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  git fetch --quiet --unshallow ||
    { echo "breaking: a shallow clone whose origin cannot deepen it: the check needs the history" >&2; exit 1; }
fi

status=0
check() { # check <what> <buf input> <against input>
  if ! "$buf" breaking "$2" --against "$3"; then
    echo "breaking: $1 breaks existing callers" >&2
    status=1
  fi
}

check "the work tree (against HEAD)" . ".git#ref=$(git rev-parse HEAD)"
commits=$(git log --format=%H HEAD -- "$protos")
n=0
for c in $commits; do
  parent=$(git rev-parse -q --verify "$c^" || true)
  # The first commit of a proto has nothing before it.
  if [ -z "$parent" ] || [ -z "$(git ls-tree -r --name-only "$parent" -- specs | grep '\.proto$' || true)" ]; then
    continue
  fi
  check "commit ${c:0:7} ($(git log -1 --format=%s "$c" | cut -c1-60))" ".git#ref=$c" ".git#ref=$parent"
  n=$((n + 1))
done
original=$(echo "$commits" | tail -1)
if [ -z "$original" ]; then
  echo "breaking: no commit in this history has a proto under specs/" >&2
  exit 1
fi
check "the work tree (against the original's contract, ${original:0:7})" . ".git#ref=$original"
if [ -n "${BUF_AGAINST:-}" ]; then
  check "the work tree (against $BUF_AGAINST)" . "$BUF_AGAINST"
fi
echo "breaking: work tree, $n proto-changing commits and the original's contract checked (WIRE_JSON)"
exit $status
