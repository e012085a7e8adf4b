"""Property: any combination of catalog rules, qualifiers, bases and targets renders
deterministically (and independently of list order) and compiles under the pinned ABI.
Policies are drawn in batches so one parser run checks several profiles."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import assert_compiles
from varmor.policy import parse_policy
from varmor.profile import build_profile, disposition
from varmor.rules import load_catalog

CATALOG = load_catalog()
IDS = {
    cat: sorted(r.id for r in CATALOG if r.category == cat)
    for cat in ("hardening", "attack-protection", "vul-mitigation")
}
TARGETS = ["/usr/bin/python3", "/bin/bash", "/usr/bin/nginx", "/opt/app/server", "/usr/bin/curl"]
RAW = [
    "deny /etc/hosts w,",
    "audit deny /tmp/** x,",
    "deny network inet6 raw,",
    "deny capability sys_ptrace,",
    "owner /var/tmp/** rw,",
    "deny signal (send) peer=unconfined,",
]


def ids(category: str) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(IDS[category]), max_size=6, unique=True)


targets = st.lists(st.sampled_from(TARGETS), max_size=3, unique=True)


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    mode = draw(st.sampled_from(["EnhanceProtect"] * 4 + ["AlwaysAllow", "RuntimeDefault"]))
    spec_policy: dict[str, Any] = {"enforcer": "AppArmor", "mode": mode}
    if mode == "EnhanceProtect":
        spec_policy["enhanceProtect"] = {
            "hardeningRules": draw(ids("hardening")),
            "attackProtectionRules": [
                {"rules": rules, "targets": tg}
                for rules, tg in draw(st.lists(st.tuples(ids("attack-protection").filter(bool), targets), max_size=3))
            ],
            "vulMitigationRules": draw(ids("vul-mitigation")),
            "appArmorRawRules": [
                {"rules": "\n".join(rules), "targets": tg}
                for rules, tg in draw(
                    st.lists(
                        st.tuples(st.lists(st.sampled_from(RAW), min_size=1, max_size=3), targets),
                        max_size=2,
                    )
                )
            ],
            "privileged": draw(st.booleans()),
            "auditViolations": draw(st.booleans()),
            "allowViolations": draw(st.booleans()),
        }
    return {
        "apiVersion": "crd.varmor.org/v1beta1",
        "kind": "VarmorPolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"target": {"kind": "Deployment", "name": "app"}, "policy": spec_policy},
    }


def reversed_lists(doc: dict[str, Any]) -> dict[str, Any]:
    """The same policy with every rule and target list reversed."""
    ep = doc["spec"]["policy"].get("enhanceProtect")
    if ep is None:
        return doc
    ep = {
        **ep,
        "hardeningRules": ep["hardeningRules"][::-1],
        "attackProtectionRules": [
            {"rules": g["rules"][::-1], "targets": g["targets"][::-1]} for g in ep["attackProtectionRules"][::-1]
        ],
        "vulMitigationRules": ep["vulMitigationRules"][::-1],
    }
    policy = {**doc["spec"]["policy"], "enhanceProtect": ep}
    return {**doc, "spec": {**doc["spec"], "policy": policy}}


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(policies(), min_size=6, max_size=6))
def test_any_combination_is_deterministic_and_compiles(docs: list[dict[str, Any]]) -> None:
    texts = {}
    for i, doc in enumerate(docs):
        policy = parse_policy(doc)
        built = build_profile(policy, "varmor-ns-p")
        assert build_profile(parse_policy(doc), "varmor-ns-p") == built
        assert build_profile(parse_policy(reversed_lists(doc)), "varmor-ns-p").text == built.text
        lines = built.text.splitlines()
        assert lines[1] == "abi <abi/3.0>,"
        assert built.text.count("profile varmor-ns-p ") == 1
        ep = policy.enhance_protect
        if ep is not None:
            disp = disposition(ep.audit_violations, ep.allow_violations)
            qualifier = disp.qualifier + " "
            for rule_id in ep.rule_ids():
                for line in CATALOG[rule_id].apparmor:
                    if line not in ("network", "network unix") or disp.allowed:
                        assert f"{qualifier}{line}" in built.text, (rule_id, line)
        texts[str(i)] = built.text
    assert_compiles(texts)
