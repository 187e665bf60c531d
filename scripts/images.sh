#!/usr/bin/env bash
# `make images`: OCI image tarballs of the four binaries with ko, no Docker daemon and no
# registry. The base (distroless/static's contents: CA certificates, nonroot user, tzdata)
# is assembled by knative/image into ko's cache, so ko resolves it offline by digest.
# Fails if an image is 30 MB or more.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export KOCACHE="$root/.data/kocache"
mkdir -p "$KOCACHE" dist/images
base=$(cd knative/image && go run .)
export KO_DEFAULTBASEIMAGE="$base"
export KO_DOCKER_REPO="${KO_DOCKER_REPO:-ray-executor.local}"
limit=$((30 * 1000 * 1000))
status=0
printf '| image | tarball (compressed layers) |\n|---|---|\n' > dist/images/sizes.md
for f in execute status list ingress; do
  bin/ko build --push=false --preserve-import-paths --tarball="dist/images/$f.tar" "./functions/$f/cmd" >/dev/null
  size=$(stat -c %s "dist/images/$f.tar")
  awk -v f="$f" -v s="$size" 'BEGIN { printf "| %s | %.1f MB |\n", f, s / 1000000 }' >> dist/images/sizes.md
  if [ "$size" -ge "$limit" ]; then
    echo "images: $f is $size bytes, over the 30 MB limit" >&2
    status=1
  fi
done
echo "images: base $base"
cat dist/images/sizes.md
exit $status
