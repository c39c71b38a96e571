#!/usr/bin/env bash
# Print the path of the promtool binary the alert tests use, fetching it once when it is missing.
#
# promtool is taken from Debian's `prometheus` package: `apt-get download` fetches the .deb (a
# statically linked Go binary inside, about 20 MB, a second), and only /usr/bin/promtool is
# unpacked into $DCR_PROMTOOL_CACHE/promtool-<version>/ (default $XDG_CACHE_HOME/dcr-stream or
# ~/.cache/dcr-stream): nothing is installed, no Prometheus server is set up. Later calls return at
# once. DCR_PROMTOOL=/path/to/promtool skips this and uses that binary instead (any promtool 2.x or
# 3.x checks and unit-tests these rules).
set -euo pipefail
if [ -n "${DCR_PROMTOOL:-}" ]; then
  [ -x "$DCR_PROMTOOL" ] || { echo "DCR_PROMTOOL=$DCR_PROMTOOL is not an executable file" >&2; exit 2; }
  echo "$DCR_PROMTOOL"
  exit 0
fi
command -v apt-get >/dev/null || {
  echo "fetching promtool needs Debian's apt-get; elsewhere set DCR_PROMTOOL to a promtool binary" >&2
  exit 2
}
cache=${DCR_PROMTOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcr-stream}
version=$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  # A fresh machine has no package lists yet: read them once (as root, as CI runs).
  apt-get update -qq >&2
  version=$(apt-cache policy prometheus | awk '/Candidate:/ {print $2}')
fi
[ -n "$version" ] && [ "$version" != "(none)" ] || { echo "Debian has no prometheus package here" >&2; exit 2; }
dir=$cache/promtool-$version
bin=$dir/promtool
if [ ! -x "$bin" ]; then
  echo "Fetching promtool from Debian's prometheus $version into $dir (once) ..." >&2
  mkdir -p "$dir"
  # Unpack into a private directory and rename: an interrupted or concurrent fetch never leaves a
  # half-written binary at $bin.
  tmp=$(mktemp -d "$dir/.fetch.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq "prometheus=$version" 2>/dev/null >&2 \
    && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool)
  mv -f "$tmp/usr/bin/promtool" "$bin"
fi
echo "$bin"
