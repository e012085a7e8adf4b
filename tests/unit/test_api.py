from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from varmor.api import MAX_PROFILE_NAME, ProfileNameError, profile_name

INSTALL_NS = "varmor"
# An ArmorProfile's name is an object name: a DNS-1123 subdomain.
SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def test_namespaced_and_cluster_profile_names_keep_varmors_form() -> None:
    assert profile_name("demo", "web", "varmor") == "varmor-demo-web"
    assert profile_name("team-a", "web", "varmor") == "varmor-team-a-web"
    assert profile_name("demo", "web.v2", "varmor") == "varmor-demo-web.v2"
    assert profile_name(None, "web", "varmor") == "varmor-cluster-varmor-web"
    assert profile_name(None, "web-hardening", "varmor") == "varmor-cluster-varmor-web-hardening"


def test_the_reviewed_collisions_get_distinct_names() -> None:
    """`a-b`/`c` vs `a`/`b-c`, and a namespace named like the cluster policies' prefix."""
    assert profile_name("a-b", "c", "varmor") == "varmor-a-b-c"
    assert profile_name("a", "b-c", "varmor") == "varmor-1.a-b-c"
    assert profile_name("cluster-varmor", "x", "varmor") == "varmor-14.cluster-varmor-x"
    assert profile_name(None, "x", "varmor") == "varmor-cluster-varmor-x"
    assert profile_name("cluster", "varmor-x", "varmor") == "varmor-7.cluster-varmor-x"


def test_too_long_name_is_refused_not_truncated() -> None:
    with pytest.raises(ProfileNameError, match="63"):
        profile_name("n" * 30, "p" * 30, "varmor")
    with pytest.raises(ProfileNameError, match="63"):
        profile_name("n" * 20, "p-" * 19 + "p", "varmor")


@pytest.mark.parametrize(
    ("namespace", "name"), [("demo", "Web"), ("Demo", "web"), ("demo", "web\n"), ("de\x1bmo", "web"), ("demo", "")]
)
def test_names_that_are_not_kubernetes_names_are_refused(namespace: str, name: str) -> None:
    """Lowercasing or passing them through could make two policies share a profile."""
    with pytest.raises(ProfileNameError):
        profile_name(namespace, name, "varmor")


# Small alphabets make collisions of the old scheme likely in every example.
labels = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?\Z").filter(lambda s: len(s) <= 63)
label_like = st.text(alphabet="ac1-", min_size=1, max_size=8).filter(lambda s: s[0] != "-" and s[-1] != "-")
namespaces = st.one_of(labels, label_like, st.sampled_from(["cluster", "cluster-varmor", "cluster-varmor-a", "a-b"]))
names = st.one_of(
    label_like,
    st.builds(lambda a, b: f"{a}.{b}", label_like, label_like),
    st.sampled_from(["varmor-x", "b-c", "c", "x", "1.a-b"]),
)
triples = st.tuples(st.booleans(), namespaces, names)


def _name(triple: tuple[bool, str, str]) -> str | None:
    cluster, namespace, name = triple
    try:
        return profile_name(None if cluster else namespace, name, INSTALL_NS)
    except ProfileNameError:
        return None


@settings(max_examples=3000, deadline=None)
@given(a=triples, b=triples)
@example(a=(False, "a-b", "c"), b=(False, "a", "b-c"))
@example(a=(False, "cluster-varmor", "x"), b=(True, "", "x"))
@example(a=(False, "cluster", "varmor-x"), b=(True, "", "x"))
@example(a=(False, "1.a", "b"), b=(False, "a", "b-c"))
def test_distinct_policies_never_share_a_profile_name(a: tuple[bool, str, str], b: tuple[bool, str, str]) -> None:
    """(kind, namespace, name) -> profile name is injective (cluster policies have no
    namespace: theirs is ignored)."""
    key_a = (a[0], "" if a[0] else a[1], a[2])
    key_b = (b[0], "" if b[0] else b[1], b[2])
    name_a, name_b = _name(a), _name(b)
    if name_a is None or name_b is None:
        return
    assert (name_a == name_b) == (key_a == key_b), (key_a, key_b, name_a)


@settings(max_examples=500, deadline=None)
@given(triple=triples)
def test_every_profile_name_is_a_short_object_name(triple: tuple[bool, str, str]) -> None:
    name = _name(triple)
    if name is not None:
        assert len(name) <= MAX_PROFILE_NAME
        assert SUBDOMAIN.fullmatch(name)
        assert name.startswith("varmor-")
