"""The layout stays the architecture: small modules, and one definition of each idea the
codebase once had several copies of (which disagreed). The import contract itself is in
`.importlinter` (run by `lint-imports` in `make test`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "varmor"
MAX_LINES = 420  # "about 400": a module past this is doing more than one job


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def definitions(name: str) -> list[str]:
    """Modules that define a top-level or nested function/class called `name`."""
    found = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
                found.append(rel(path))
    return found


def callers(name: str) -> set[str]:
    """Modules that call `name(...)` (as a bare name or an attribute)."""
    found = set()
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if called == name:
                    found.add(rel(path))
    return found


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_module_is_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{rel(path)} has {lines} lines; split it by responsibility"


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("LabelSelector", "varmor/admission/selector.py"),
        ("resource_path", "varmor/kube/paths.py"),
        ("Backoff", "varmor/kube/backoff.py"),
        ("exponential", "varmor/kube/backoff.py"),
        ("task_group", "varmor/kube/tasks.py"),
        ("compile_policy", "varmor/pipeline.py"),
        ("event_body", "varmor/events.py"),
        ("parse_time", "varmor/clock.py"),
        ("now_rfc3339", "varmor/clock.py"),
        ("utc_now", "varmor/clock.py"),
    ],
)
def test_one_definition(name: str, home: str) -> None:
    assert definitions(name) == [home]


def test_policies_become_profiles_only_through_the_pipeline() -> None:
    """parse -> name -> build happens in compile_policy; nobody else strings them together."""
    assert callers("parse_policy") <= {"varmor/pipeline.py"}
    assert callers("build_profile") <= {"varmor/pipeline.py"}


def test_api_paths_are_built_only_by_the_path_builder() -> None:
    """Every path goes through varmor/kube/paths.py, which URL-quotes names."""
    literal = re.compile(r"^/apis?/")
    offenders = []
    for path in modules():
        if rel(path) == "varmor/kube/paths.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and literal.match(node.value):
                offenders.append(f"{rel(path)}:{node.lineno}")
    assert offenders == []


def test_no_hand_made_backoff_or_supervision() -> None:
    backoff = re.compile(r"backoff\s*\*\s*2|asyncio\.wait\([^)]*FIRST_EXCEPTION", re.S)
    offenders = [rel(p) for p in modules() if backoff.search(p.read_text())]
    assert offenders == []
