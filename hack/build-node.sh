#!/usr/bin/env bash
# Builds what a real Kubernetes node in the AppArmor test VM runs, into
# $VARMOR_CACHE/bin/node-<k8s version>/: the kubelet (the same throwaway-module pipeline as
# hack/build-control-plane.sh) and containerd 2 with ctr and containerd-shim-runc-v2 from
# the Go module proxy (Kubernetes >= 1.36 needs containerd 2; Debian ships 1.6); runc and
# the standard CNI plugins come from Debian's packages. Cached: only the first run pays.
# Prints the output directory.
set -euo pipefail

default_version="$(sed -n 's/^DEFAULT_K8S_VERSION = "\(.*\)"$/\1/p' "$(dirname "$0")/../varmor/dev/paths.py")"
K8S_VERSION="${K8S_VERSION:-$default_version}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
CACHE="${VARMOR_CACHE:-$HOME/.cache/varmor}"
OUT="$CACHE/bin/node-$K8S_VERSION"
export GOMODCACHE="${GOMODCACHE:-$CACHE/go/mod}"
export GOCACHE="${GOCACHE:-$CACHE/go/build}"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0
BINARIES=(kubelet containerd ctr containerd-shim-runc-v2 runc cni/bridge cni/host-local cni/loopback cni/portmap)

complete() { for b in "${BINARIES[@]}"; do [[ -x "$OUT/$b" ]] || return 1; done; }
if complete && [[ "$(cat "$OUT/containerd.version" 2>/dev/null)" == "$CONTAINERD_VERSION" ]]; then
  echo "$OUT"
  exit 0
fi
command -v go >/dev/null || { echo "go is required: run make setup" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT.tmp/cni"

# -- the kubelet -------------------------------------------------------------------------
staging_version="v0.${K8S_VERSION#v1.}"
modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
mapfile -t staging < <(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile")
mkdir -p "$work/kubelet" && cd "$work/kubelet"
{
  echo "module varmor.local/node"
  echo
  echo "go 1.24.0"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  for m in "${staging[@]}"; do echo "  $m => $m $staging_version"; done
  echo ")"
} > go.mod
printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kubelet"\n' > tools.go
go mod tidy  # stderr: each module downloaded (the setup step counts them)
minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
go build -v -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
  -o "$OUT.tmp/kubelet" k8s.io/kubernetes/cmd/kubelet

# -- containerd 2 ------------------------------------------------------------------------
mkdir -p "$work/containerd" && cd "$work/containerd"
printf 'module varmor.local/containerd\n\ngo 1.24.0\n\nrequire github.com/containerd/containerd/v2 %s\n' "$CONTAINERD_VERSION" > go.mod
printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "github.com/containerd/containerd/v2/cmd/containerd"\n\t_ "github.com/containerd/containerd/v2/cmd/ctr"\n\t_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"\n)\n' > tools.go
go mod tidy  # stderr: each module downloaded (the setup step counts them)
tags="no_btrfs no_devmapper no_zfs no_aufs no_cri_dockershim"
cdl="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
go build -v -trimpath -tags "$tags" -ldflags "$cdl" -o "$OUT.tmp/" \
  github.com/containerd/containerd/v2/cmd/containerd \
  github.com/containerd/containerd/v2/cmd/ctr \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
echo "$CONTAINERD_VERSION" > "$OUT.tmp/containerd.version"

# -- runc and the CNI plugins from Debian -------------------------------------------------
mkdir -p "$work/deb" && cd "$work/deb"
apt-get -o APT::Sandbox::User=root download runc containernetworking-plugins >/dev/null 2>&1 || {
  echo "cannot download runc and containernetworking-plugins (apt-get update?)" >&2
  exit 1
}
for deb in ./*.deb; do dpkg-deb -x "$deb" root; done
cp root/usr/sbin/runc "$OUT.tmp/runc"
for plugin in bridge host-local loopback portmap; do
  cp "root/usr/lib/cni/$plugin" "$OUT.tmp/cni/$plugin"
done

rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
echo "$OUT"
