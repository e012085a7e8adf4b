"""The supported range and the per-release choices, as the API server reports releases."""

from __future__ import annotations

import pytest

from varmor.kubeversion import Attachment, KubeVersion, attachment, refusal


@pytest.mark.parametrize(
    ("major", "minor", "release"),
    [("1", "29", (1, 29)), ("1", "30+", (1, 30)), ("1", "37", (1, 37)), ("1", "28+gke", (1, 28))],
)
def test_parse_reads_the_leading_numbers_managed_distributions_suffix(
    major: str, minor: str, release: tuple[int, int]
) -> None:
    assert KubeVersion.parse(major, minor).release == release


@pytest.mark.parametrize(("major", "minor"), [("", "29"), ("1", ""), ("one", "29"), ("1", "+")])
def test_parse_refuses_what_is_not_a_version(major: str, minor: str) -> None:
    with pytest.raises(ValueError, match="not a Kubernetes version"):
        KubeVersion.parse(major, minor, "unknown")


def test_parse_falls_back_to_the_git_version_when_major_and_minor_are_empty() -> None:
    assert KubeVersion.parse("", "", "v1.30.14-eks-1").release == (1, 30)


def test_releases_order_by_number_not_by_their_git_version() -> None:
    assert KubeVersion(1, 9, "v1.9.0") < KubeVersion(1, 29, "v1.29.0") < KubeVersion(1, 30, "v1.30.0")
    assert KubeVersion(1, 30, "v1.30.1") == KubeVersion(1, 30, "v1.30.14")
    assert str(KubeVersion(1, 30, "v1.30.14")) == "v1.30.14"
    assert str(KubeVersion(1, 30)) == "v1.30"


def test_releases_below_1_29_are_refused_with_the_reason() -> None:
    message = refusal(KubeVersion(1, 28, "v1.28.15"))
    assert message is not None
    assert "v1.28.15 is not supported" in message
    assert "1.29 or later" in message
    assert refusal(KubeVersion(1, 29)) is None
    assert refusal(KubeVersion(2, 0)) is None


@pytest.mark.parametrize(
    ("mode", "release", "seen_without_field", "expected"),
    [
        ("auto", (1, 29), True, Attachment(field=False, beta_annotation=True)),
        ("auto", (1, 30), False, Attachment(field=True, beta_annotation=False)),
        ("auto", (1, 37), False, Attachment(field=True, beta_annotation=False)),
        # upgraded under a running varmor: an older API server may still admit some pods
        ("auto", (1, 30), True, Attachment(field=True, beta_annotation=True)),
        ("field", (1, 29), True, Attachment(field=True, beta_annotation=False)),
        ("annotation", (1, 37), False, Attachment(field=False, beta_annotation=True)),
    ],
)
def test_auto_follows_the_release_and_a_pinned_mode_wins(
    mode: str, release: tuple[int, int], seen_without_field: bool, expected: Attachment
) -> None:
    assert attachment(mode, KubeVersion(*release), seen_without_field) == expected  # type: ignore[arg-type]
