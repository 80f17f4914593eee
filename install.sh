#!/usr/bin/env bash
# Sets up vmkeep on a fresh Debian 12 (Python 3.11) machine: the Debian packages it relies on,
# a virtual environment in .venv with vmkeep and its Python dependencies, and the vcsim/ simulator.
# Safe to run again. Usage: ./install.sh [--bench]   (--bench adds restic and borg for bench/)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

packages=(python3 python3-venv python3-dev gcc golang-go golang-github-vmware-govmomi-dev qemu-utils samba zstd time redis-server)
[[ "${1:-}" == "--bench" ]] && packages+=(restic borgbackup)

sudo=()
[[ "$(id -u)" == 0 ]] || sudo=(sudo)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install.sh: installing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# An editable install leaves our sources uncompiled, and with PYTHONDONTWRITEBYTECODE set (as in
# containers) every command would compile them again: 50 ms of a 0.35 s incremental.
.venv/bin/python -m compileall -q agent hypervisors repository >/dev/null

vcsim/build.sh >/dev/null
echo "install.sh: ready: .venv/bin/vmkeep"
