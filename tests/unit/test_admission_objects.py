"""The typed views admission decodes: every container kind, and misshapen objects refused
with the JSON path of the problem."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests import helpers
from varmor.admission.objects import ObjectView, PlanError, view_of
from varmor.admission.review import ReviewError, parse_mutation_review


def review(obj: Any) -> bytes:
    request = {"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE", "object": obj}
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})


def test_every_container_kind_is_decoded() -> None:
    pod = helpers.pod("p", {"app": "web"}, init=("init",), ephemeral=("dbg",))
    pod["spec"]["initContainers"].append({"name": "sidecar", "image": "s", "restartPolicy": "Always"})
    pod["spec"]["ephemeralContainers"][0]["securityContext"] = {"appArmorProfile": {"type": "Unconfined"}}
    view = parse_mutation_review(review(pod)).obj
    assert isinstance(view, ObjectView)
    assert view == view_of(pod)
    assert view.spec is not None
    assert [c.name for c in view.spec.containers or ()] == ["c"]
    assert [c.name for c in view.spec.init_containers or ()] == ["init", "sidecar"]
    (dbg,) = view.spec.ephemeral_containers or []
    assert dbg.security_context is not None
    assert dbg.security_context.app_armor_profile is not None
    assert dbg.security_context.app_armor_profile.type == "Unconfined"


def test_absent_lists_stay_none() -> None:
    view = view_of(helpers.pod())
    assert view.spec is not None
    assert (view.spec.init_containers, view.spec.ephemeral_containers) == (None, None)


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"containers": [], "initContainers": [{"image": "x"}]}, "$.spec.initContainers[0]"),
        ({"containers": [], "ephemeralContainers": "x"}, "$.spec.ephemeralContainers"),
        ({"containers": [], "initContainers": [{"name": "i", "securityContext": []}]}, "$.spec.initContainers[0]"),
    ],
)
def test_misshapen_init_and_ephemeral_containers_name_the_path(spec: dict[str, Any], where: str) -> None:
    with pytest.raises(PlanError) as exc:
        view_of({"spec": spec})
    assert f"`{where}" in str(exc.value)
    with pytest.raises(ReviewError, match="not an AdmissionReview"):
        parse_mutation_review(review({"spec": spec}))
