"""The checked-in CRDs are exactly what `varmor crds` generates from the models and catalog."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from varmor import crdgen, crdschema
from varmor.models import CATEGORY_FIELDS
from varmor.rules import load_catalog

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "chart" / "crds"


def test_checked_in_crds_equal_generated() -> None:
    generated = {crdgen.file_name(crd): crdgen.render(crd) for crd in crdgen.crds()}
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in CRD_DIR.glob("*.yaml")}
    assert sorted(on_disk) == sorted(generated), "run `varmor crds --out chart/crds`"
    for name, text in generated.items():
        assert on_disk[name] == text, f"{name} is stale: run `varmor crds --out chart/crds`"


def _normalised(node: Any) -> Any:
    """A CRD with `required` lists sorted: their order means nothing to the API server."""
    if isinstance(node, dict):
        return {k: sorted(v) if k == "required" else _normalised(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_normalised(v) for v in node]
    return node


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                return f"{path}/{key}: only in {'generated' if key in b else 'chart/crds'}"
            found = _first_difference(a[key], b[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def test_generated_crds_equal_checked_in_semantically() -> None:
    """Generated and checked-in CRDs validate alike, and a failure names the first schema
    path that differs (the byte-for-byte check above only says the file is stale). The
    model-generated CRDs were checked this way against the hand-written ones they replaced."""
    reference = {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in CRD_DIR.glob("*.yaml")}
    generated = {crdgen.file_name(crd): crd for crd in crdgen.crds()}
    assert sorted(reference) == sorted(generated)
    for name, crd in generated.items():
        want, got = _normalised(reference[name]), _normalised(crd)
        assert got == want, f"{name}: {_first_difference(want, got)}"


def _schema(kind: str) -> dict[str, Any]:
    crd = next(c for c in crdgen.crds() if c["spec"]["names"]["kind"] == kind)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_every_catalog_id_and_alias_is_allowed_in_its_own_list_only() -> None:
    spec = _schema("VarmorPolicy")["properties"]["spec"]
    ep = spec["properties"]["policy"]["properties"]["enhanceProtect"]["properties"]
    rules_by_field = {
        "hardeningRules": ep["hardeningRules"]["items"],
        "attackProtectionRules": ep["attackProtectionRules"]["items"]["properties"]["rules"]["items"],
        "vulMitigationRules": ep["vulMitigationRules"]["items"],
    }
    for rule in load_catalog():
        field = CATEGORY_FIELDS[rule.category]
        for spelling in (rule.id, *rule.aliases):
            for other, item in rules_by_field.items():
                cel = item["x-kubernetes-validations"][0]["rule"]
                assert (f"'{spelling}'" in cel) == (other == field), (spelling, other)


def test_schema_is_structural_and_described() -> None:
    for crd in crdgen.crds():
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for node in crdschema.walk(root):
            if node is root["properties"]["metadata"]:
                continue
            assert "type" in node
            if node["type"] in ("object", "array"):
                # Every compound node says what it is for, so `kubectl explain` helps.
                assert node.get("description"), node
            if node["type"] == "object":
                assert "properties" in node or "additionalProperties" in node
            # What msgspec's JSON Schema has and a structural schema must not.
            assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title"} & node.keys(), node


def test_short_names_and_columns() -> None:
    names = {c["spec"]["names"]["kind"]: c["spec"]["names"].get("shortNames") for c in crdgen.crds()}
    assert names["VarmorPolicy"] == ["vpol"]
    assert names["VarmorClusterPolicy"] == ["vcpol"]
    for crd in crdgen.crds():
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}


def test_rendered_yaml_has_no_anchors() -> None:
    for crd in crdgen.crds():
        text = crdgen.render(crd)
        assert "&id" not in text
        assert yaml.safe_load(text) == crd


def test_cli_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    crdgen.register(sub)
    args = parser.parse_args(["crds", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crdgen.file_name(c) for c in crdgen.crds())
    capsys.readouterr()
    args = parser.parse_args(["crds"])
    assert args.func(args) == 0
    assert len(list(yaml.safe_load_all(capsys.readouterr().out))) == len(crdgen.crds())
