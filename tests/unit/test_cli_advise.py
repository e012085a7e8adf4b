"""`varmor advise`: a model or a violations log in, the report and a policy varmor accepts
out; `-o policy` keeps stdout to the policy alone, for `kubectl apply -f -`."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from varmor.behavior.codec import encode_model_data
from varmor.behavior.model import Behavior, CapabilityRule, FileRule, NetworkRule
from varmor.cli import advise
from varmor.nodeexec.audit import parse_line
from varmor.nodeexec.violations import Violation
from varmor.policy import parse_policy

AUDIT = Path(__file__).resolve().parents[1] / "data" / "audit"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="varmor")
    advise.register(parser.add_subparsers())
    args = parser.parse_args(["advise", *argv])
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def model_file(tmp_path: Path, *, compress: bool = False, as_json: bool = False) -> Path:
    behavior = Behavior()
    for rule in (FileRule("/etc/passwd", "r"), NetworkRule("inet", "stream", "6"), CapabilityRule("net_bind_service")):
        behavior.add(rule, 4)
    storage, data = encode_model_data(behavior, compress_over=0 if compress else 1 << 20)
    obj = {
        "apiVersion": "crd.varmor.org/v1beta1",
        "kind": "ArmorProfileModel",
        "metadata": {"name": "varmor-shop-web", "namespace": "shop"},
        "storageType": storage,
        "data": data,
        "status": {"lostRecords": 2},
    }
    path = tmp_path / ("model.json" if as_json else "model.yaml")
    path.write_text(json.dumps(obj) if as_json else yaml.safe_dump(obj))
    return path


def policy_of(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text)
    parse_policy(doc)  # varmor accepts it as it is
    return dict(doc)


def test_the_default_output_is_the_report_then_the_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--model", str(model_file(tmp_path)), "--target-name", "web")
    assert (code, err) == (0, "")
    report, policy = out.split("Policy (`-o policy` prints only this):\n")
    assert "Behaviour: 3 rules from 12 records (2 lost)" in report
    assert "  disable-access-passwd [attack protection]" in report
    assert "would deny /etc/passwd r  (4 records; by `/etc/passwd rw`)" in report
    doc = policy_of(policy)
    assert doc["metadata"] == {"name": "advised", "namespace": "shop"}  # the model's namespace
    assert doc["spec"]["target"] == {"kind": "Deployment", "name": "web"}
    hardening = doc["spec"]["policy"]["enhanceProtect"]["hardeningRules"]
    assert "disable-cap-net-bind-service" not in hardening
    assert "disable-cap-sys-admin" in hardening


@pytest.mark.parametrize("compress", [False, True])
def test_policy_output_is_only_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, compress: bool
) -> None:
    """`varmor advise --model - -o policy | kubectl apply -f -`: stdout is one YAML
    document (the header is a comment), the report is on stderr."""
    text = model_file(tmp_path, compress=compress, as_json=True).read_text()
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    argv = ["--model", "-", "-o", "policy", "--policy-name", "shop-web", "--namespace", "prod"]
    code, out, err = run(capsys, *argv, "--target-kind", "StatefulSet", "--target-name", "web", "--privileged")
    assert code == 0
    assert out.startswith("# Proposed by `varmor advise` from stdin:")
    assert len(list(yaml.safe_load_all(out))) == 1
    doc = policy_of(out)
    assert doc["metadata"] == {"name": "shop-web", "namespace": "prod"}
    assert doc["spec"]["target"] == {"kind": "StatefulSet", "name": "web"}
    assert doc["spec"]["policy"]["enhanceProtect"]["privileged"] is True
    assert "Left out:" in err
    assert "disable-access-passwd" in err


def violations_log(tmp_path: Path, *, torn: bool = True) -> Path:
    """The agent's violation log for the real kernel records in tests/data/audit, ending
    in half a line as a log being written may."""
    lines = []
    for source in ("allowed.log", "denied.log"):
        for raw in (AUDIT / source).read_text().splitlines():
            record = parse_line(raw)
            if record is not None:
                lines.append(json.dumps(Violation(record, None).as_json("node-1")))
    assert lines
    path = tmp_path / "violations.jsonl"
    path.write_text("\n".join(lines) + "\n" + ('{"node": "node-1", "act' if torn else ""))
    return path


def test_violations_are_cited_with_a_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = violations_log(tmp_path)
    code, out, err = run(capsys, "--violations", str(log), "--profile", "vr-disable-busybox-compl")
    assert (code, err) == (0, "")
    block = out.split("  disable-busybox [attack protection]\n")[1].split("\n  disable-")[0]
    assert "would deny exec /bin/busybox  (1 record; by `/**/busybox`)" in block
    assert "e.g. ALLOWED exec /bin/busybox by vprobe (vr-disable-busybox-compl)" in block
    assert "warning: 1 lines are not JSON and were skipped" in out
    policy_of(out.split("prints only this):\n")[1])


def test_a_log_of_several_profiles_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--violations", str(violations_log(tmp_path, torn=False)))
    assert code == 0
    assert "profiles were judged together; pass --profile for one" in out
    assert "  disallow-umount [hardening]" in out


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (None, [], "cannot read"),
        ("kind: ArmorProfile\n", [], "expected an ArmorProfileModel, got kind 'ArmorProfile'"),
        ("{}\n", ["--profile", "varmor-demo-web"], "--profile selects records of a violations log"),
        ("[1, 2]\n", [], "expected an ArmorProfileModel object"),
        ("{storageType: CRDInternalCompressed, data: {compressed: '%%'}}\n", [], "corrupt model: data.compressed"),
        ("{kind: ArmorProfileModel, data: {}}\n", [], "holds no behaviour yet"),
        (": : :\n", [], "not YAML or JSON"),
    ],
)
def test_bad_model_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, extra: list[str], message: str
) -> None:
    path = tmp_path / "model.yaml"
    if content is not None:
        path.write_text(content)
    code, out, err = run(capsys, "--model", str(path), *extra)
    assert (code, out) == (2, "")
    assert err.startswith("error: ")
    assert message in err


def test_an_invalid_policy_name_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(model_file(tmp_path)), "--policy-name", "Bad_Name", "--target-name", "web"]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("error: the proposed policy: metadata.name: policy name 'Bad_Name'")


def test_a_log_without_behaviour_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = violations_log(tmp_path)
    code, out, err = run(capsys, "--violations", str(log), "--profile", "varmor-nobody-here")
    assert (code, out) == (2, "")
    assert "no behaviour in" in err
    assert "for profile varmor-nobody-here" in err


def test_exactly_one_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run(capsys, "--model", "a", "--violations", "b")
    with pytest.raises(SystemExit):
        run(capsys)
