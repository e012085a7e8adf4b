#!/usr/bin/env bash
# The whole suite: lint, types, unit, cluster and kernel tests. Fails when no test ran.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check varmor tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "no tests ran" >&2; exit 1; fi
exit "$rc"
