#!/usr/bin/env bash
# Installs everything varmor's development and tests need, idempotently:
# Debian packages, the Python venv, the control-plane binaries and the test kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(apparmor qemu-system-x86 busybox-static cpio gcc libc6-dev golang-go)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# golang-go is only a fallback: the machine's own Go is preferred when present.
if command -v go >/dev/null; then
  missing=("${missing[@]/golang-go}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
  echo "setup: apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

start=$(date +%s)
bash hack/build-control-plane.sh >/dev/null
if [ -f hack/fetch-kernel.sh ]; then bash hack/fetch-kernel.sh >/dev/null; fi
echo "setup: done ($(( $(date +%s) - start ))s for binaries and kernel)"
