"""The test tree's layout, kept so: one `wait_for` (tests/helpers.py), and every unit test
file named after the module it tests, so a reader finds the tests of `varmor/X/Y.py` in
`tests/unit/test_X_Y.py` (of `varmor/Y.py` in `test_Y.py`, of a package `varmor/X/` in
`test_X.py`), optionally followed by `_<aspect>` (e.g. `test_profile_builder_golden.py`)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Unit test files that test no single module, and what they test instead.
NOT_A_MODULE = {
    "test_layout": "the test tree's layout (this file)",
    "test_architecture": "the package's structure: module sizes, single definitions, path building",
    "test_pure_core": "the pure core's import discipline",
}


def modules() -> set[str]:
    """Every varmor module and package, as the flat name a test file uses (admission_planner)."""
    names: set[str] = set()
    for path in (ROOT / "varmor").rglob("*.py"):
        parts = path.relative_to(ROOT / "varmor").with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts and parts[-1] != "__main__":
            names.add("_".join(parts))
    return names


def module_tested_by(stem: str, names: set[str]) -> str | None:
    """The longest module name that `test_<module>[_<aspect>]` starts with."""
    rest = stem.removeprefix("test_")
    found = [m for m in names if rest == m or rest.startswith(m + "_")]
    return max(found, key=len) if found else None


def test_unit_test_files_are_named_after_the_module_they_test() -> None:
    names = modules()
    stems = sorted(p.stem for p in (ROOT / "tests" / "unit").glob("test_*.py"))
    unmapped = [s for s in stems if s not in NOT_A_MODULE and module_tested_by(s, names) is None]
    assert unmapped == [], f"name these after the module they test (or list them in NOT_A_MODULE): {unmapped}"
    stale = sorted(set(NOT_A_MODULE) - set(stems))
    assert stale == [], f"NOT_A_MODULE lists files that do not exist: {stale}"


def test_the_mapping_reads_flat_module_names() -> None:
    names = {"admission_planner", "kube", "kube_workqueue", "profile_builder", "policy"}
    assert module_tested_by("test_admission_planner", names) == "admission_planner"
    assert module_tested_by("test_kube_workqueue", names) == "kube_workqueue"
    assert module_tested_by("test_profile_builder_golden", names) == "profile_builder"
    assert module_tested_by("test_policy", names) == "policy"
    assert module_tested_by("test_planner", names) is None
    assert module_tested_by("test_policyx", names) is None


def definitions(name: str) -> list[str]:
    found: list[str] = []
    for top in ("tests", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                defined = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name
                assigned = isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == name for t in node.targets
                )
                if defined or assigned:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_wait_for_is_defined_once_in_the_helpers() -> None:
    assert [d.split(":")[0] for d in definitions("wait_for")] == ["tests/helpers.py"]
