"""The pure core stays free of I/O imports, so it is testable without servers and
cannot block the event loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "varmor"
# Modules that take plain data and return plain data. `cli.py` files are shells.
# The pure core's top-level packages are also held to this by `.importlinter`
# ("the pure core does no I/O"); this test adds the pure modules that live inside the
# roles and the shared layer, next to the I/O they serve.
PURE_GLOBS = (
    "api.py",
    "clock.py",
    "events.py",
    "pipeline.py",
    "loadreport.py",
    "reconcile/loadindex.py",
    "policy/*.py",
    "behavior/*.py",
    "crdgen.py",
    "crdschema.py",
    "models/*.py",
    "rules/*.py",
    "profile/*.py",
    "admission/*.py",
    "certs/bundle.py",
    "reconcile/status.py",
    "reconcile/nodecounts.py",
    "reconcile/findings.py",
    "reconcile/profiles.py",
    "nodeexec/audit.py",
    "nodeexec/auditloss.py",
)
FORBIDDEN = {
    "aiohttp",
    "asyncio",
    "kubernetes",
    "subprocess",
    "socket",
    "ssl",
    "urllib",
    "http",
    "requests",
    "varmor.kube",
    "varmor.parser",
    "prometheus_client",
}


def pure_modules() -> list[Path]:
    found = {p for pattern in PURE_GLOBS for p in ROOT.glob(pattern) if p.name != "cli.py"}
    return sorted(found)


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("pattern", PURE_GLOBS)
def test_every_listed_pure_module_exists(pattern: str) -> None:
    """A renamed module must not silently drop out of the check."""
    assert list(ROOT.glob(pattern)), f"{pattern} matches nothing under varmor/"


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_has_no_io_imports(path: Path) -> None:
    bad = {n for n in imported_names(path) if n.split(".")[0] in FORBIDDEN or n in FORBIDDEN}
    assert not bad, f"{path.relative_to(ROOT)} imports I/O modules {sorted(bad)}"
