#!/usr/bin/env bash
# Builds vcsim/bin/vmkeep-vcsim offline from Debian's golang-go and
# golang-github-vmware-govmomi-dev, and prints the binary's path.
# Does nothing (but print the path) when the binary is newer than every source.
# Usage: vcsim/build.sh [--force]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin/vmkeep-vcsim"
force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

up_to_date() {
  [[ -x "$bin" ]] || return 1
  local src
  for src in "$here"/*.go "$here/build.sh"; do
    [[ "$src" -nt "$bin" ]] && return 1
  done
  return 0
}

mkdir -p "$here/bin"
# One build at a time (parallel test workers may all ask for it).
exec 9>"$here/bin/.build.lock"
flock 9

if [[ $force -eq 0 ]] && up_to_date; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: go not found (apt-get install golang-go)" >&2; exit 1; }
gopath="${VMKEEP_GOPATH:-/usr/share/gocode}"
[[ -d "$gopath/src/github.com/vmware/govmomi/simulator" ]] || {
  echo "build.sh: govmomi not found under $gopath (apt-get install golang-github-vmware-govmomi-dev)" >&2
  exit 1
}
if [[ -z "${GOCACHE:-}" && -z "${XDG_CACHE_HOME:-}" && -z "${HOME:-}" ]]; then
  export GOCACHE="$here/bin/.gocache"
fi

tmp="$(mktemp "$here/bin/.vmkeep-vcsim.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
(
  cd "$here"
  GOPATH="$gopath" GO111MODULE=off GOFLAGS= CGO_ENABLED=0 \
    go build -trimpath -ldflags "-s -w" -o "$tmp" .
)
chmod 0755 "$tmp"
mv -f "$tmp" "$bin"
trap - EXIT
echo "$bin"
