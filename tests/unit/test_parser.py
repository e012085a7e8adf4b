"""The compile edge: pinned ABI, rule-not-enforced as error, failures land on the right file."""

from __future__ import annotations

from varmor.parser import COMPILE_FLAGS, compile_check, compile_command, features_file

HEAD = "abi <abi/3.0>,\n#include <tunables/global>\n"


def profile(name: str, *rules: str) -> str:
    body = "".join(f"  {r},\n" for r in rules)
    return f"{HEAD}profile {name} {{\n  #include <abstractions/base>\n  file,\n{body}}}\n"


def test_features_file_is_pinned_and_packaged() -> None:
    text = features_file().read_text()
    assert "network_v8" in text
    assert "caps" in text


def test_command_uses_pinned_abi_and_werror() -> None:
    cmd = compile_command(["/x.aa"], ["/inc"])
    assert cmd[1:3] == ["--config-file", "/dev/null"]
    assert all(flag in cmd for flag in COMPILE_FLAGS)
    assert cmd[cmd.index("-M") + 1] == str(features_file())
    assert cmd[-3:] == ["-I", "/inc", "/x.aa"]


def test_batch_attributes_each_failure() -> None:
    texts = {
        "good1": profile("g1", "deny network packet"),
        "unenforced": profile("u", "deny unix addr=@/containerd-shim/**"),
        "good2": profile("g2", "deny capability sys_admin"),
        "syntax": profile("s", "bogus rule"),
        "dbus": profile("d", "dbus"),
        "good3": profile("g3", "deny mount fstype=securityfs"),
    }
    results = compile_check(texts)
    assert [k for k, r in results.items() if r.ok] == ["good1", "good2", "good3"]
    assert "not enforced" in results["unenforced"].message
    assert results["unenforced"].message.startswith("Warning converted to Error")
    assert "syntax error" in results["syntax"].message
    assert "syntax" in results["syntax"].message
    assert "dbus rules not enforced" in results["dbus"].message


def test_sample_node_local_include_is_provided() -> None:
    text = HEAD + "#include <varmor/node-local>\nprofile n {\n  deny @{VARMOR_DISK_DEVICES} rw,\n}\n"
    assert compile_check({"n": text})["n"].ok


def test_empty_input() -> None:
    assert compile_check({}) == {}
