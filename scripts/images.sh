#!/usr/bin/env bash
# `make images`: OCI image tarballs of the four binaries with ko, no Docker daemon and no
# registry. The base (distroless/static's contents: CA certificates, nonroot user, tzdata)
# is assembled by knative/image into ko's cache, so ko resolves it offline by digest.
# Fails if an image is 30 MB or more, or lacks its OCI labels: every image says where it
# comes from (org.opencontainers.image.source, .revision: the full commit, .version: the
# commit as the binary itself reports it in its logs and GetStatus, 7 hex digits with
# "-dirty" for uncommitted changes). The binaries are built with VCS stamping on
# (.ko.yaml: -buildvcs=true, whatever the machine's go env says) so that they know it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export KOCACHE="$root/.data/kocache"
mkdir -p "$KOCACHE" dist/images
base=$(cd knative/image && go run .)
export KO_DEFAULTBASEIMAGE="$base"
export KO_DOCKER_REPO="${KO_DOCKER_REPO:-ray-executor.local}"
source_url="https://$(go list -m)"
revision=$(git rev-parse HEAD)
version=${revision:0:7}
if [ -n "$(git status --porcelain)" ]; then
  version="$version-dirty" # as Go stamps it (untracked files count), so label and binary agree
fi
labels="org.opencontainers.image.source=$source_url,org.opencontainers.image.revision=$revision,org.opencontainers.image.version=$version"
limit=$((30 * 1000 * 1000))
status=0
printf '| image | tarball (compressed layers) |\n|---|---|\n' > dist/images/sizes.md
for f in execute status list ingress; do
  bin/ko build --push=false --preserve-import-paths --image-label "$labels" \
    --tarball="dist/images/$f.tar" "./functions/$f/cmd" >/dev/null
  size=$(stat -c %s "dist/images/$f.tar")
  config=$(tar -xOf "dist/images/$f.tar" manifest.json | sed -n 's/.*"Config":"\([^"]*\)".*/\1/p')
  for kv in "source\":\"$source_url" "revision\":\"$revision" "version\":\"$version"; do
    if ! tar -xOf "dist/images/$f.tar" "$config" | grep -qF "\"org.opencontainers.image.$kv\""; then
      echo "images: $f lacks the OCI label org.opencontainers.image.${kv%%\"*}" >&2
      status=1
    fi
  done
  awk -v f="$f" -v s="$size" 'BEGIN { printf "| %s | %.1f MB |\n", f, s / 1000000 }' >> dist/images/sizes.md
  if [ "$size" -ge "$limit" ]; then
    echo "images: $f is $size bytes, over the 30 MB limit" >&2
    status=1
  fi
done
echo "images: base $base; labels $labels"
cat dist/images/sizes.md
exit $status
