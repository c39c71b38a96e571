#!/usr/bin/env bash
# Print the path of the helm binary the chart tests use, building it once when it is missing.
#
# helm is built from its Go module (helm.sh/helm/v3 at a pinned tag), so a fresh machine needs only
# Go and the module proxy; the first build takes a few minutes of CPU, later calls return at once.
# The binary lives outside the repo in $DCR_HELM_CACHE/helm-<version>/helm (default
# $XDG_CACHE_HOME/dcr-stream or ~/.cache/dcr-stream); Go's own module and build caches stay at their
# defaults (GOMODCACHE, GOCACHE), so a rebuild after a cache wipe is incremental.
# DCR_HELM=/path/to/helm skips the build and uses that binary instead.
set -euo pipefail
version=v3.22.0
if [ -n "${DCR_HELM:-}" ]; then
  [ -x "$DCR_HELM" ] || { echo "DCR_HELM=$DCR_HELM is not an executable file" >&2; exit 2; }
  echo "$DCR_HELM"
  exit 0
fi
dir=${DCR_HELM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcr-stream}/helm-$version
bin=$dir/helm
if [ ! -x "$bin" ]; then
  go=$(command -v go || echo /usr/local/go/bin/go)  # Go's own install path, when not on PATH
  [ -x "$go" ] || { echo "building helm $version needs Go 1.26+ (https://go.dev/dl/)" >&2; exit 2; }
  echo "Building helm $version from source into $dir (once; a few minutes) ..." >&2
  mkdir -p "$dir"
  # Build into a private directory and rename: an interrupted or concurrent build never leaves a
  # half-written binary at $bin.
  tmp=$(mktemp -d "$dir/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # The flags of helm's own Makefile: its version, and Kubernetes 1.37 (its client-go v0.37) as the
  # default cluster version of `helm template` and `helm lint` (unset, Go's build says 1.20).
  pkg=helm.sh/helm/v3/pkg
  GOBIN=$tmp CGO_ENABLED=0 "$go" install -trimpath -ldflags "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$version \
    -X $pkg/chartutil.k8sVersionMajor=1 -X $pkg/chartutil.k8sVersionMinor=37 \
    -X $pkg/lint/rules.k8sVersionMajor=1 -X $pkg/lint/rules.k8sVersionMinor=37" \
    "helm.sh/helm/v3/cmd/helm@$version" >&2
  mv -f "$tmp/helm" "$bin"
fi
echo "$bin"
