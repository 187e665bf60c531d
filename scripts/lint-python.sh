#!/usr/bin/env bash
# Lints and type-checks the Ray payload package (shared/executor/payload/ray_executor_payload) with
# the ruff and mypy pinned in shared/executor/payload/requirements.txt, from the project's .venv.
# Their settings are in shared/executor/payload/pyproject.toml. bench/ and tests/ are not checked.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="${VENV:-$root/.venv}"
for tool in ruff mypy; do
  if [ ! -x "$venv/bin/$tool" ]; then
    echo "lint-python: $venv/bin/$tool is missing: install shared/executor/payload/requirements.txt into $venv" >&2
    exit 1
  fi
done
cd "$root/shared/executor/payload"
echo "== ruff"
"$venv/bin/ruff" check --no-cache ray_executor_payload
echo "== mypy"
"$venv/bin/mypy" --no-incremental --cache-dir=/dev/null
