"""msgspec's JSON Schema becomes a Kubernetes structural schema: what the converter keeps,
rewrites and refuses, on small models (the real CRDs are checked in test_crdgen.py)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import pytest
from msgspec import UNSET, Meta, UnsetType

from varmor import api, crdschema


class Inner(msgspec.Struct, rename="camel"):
    """An inner object,
    wrapped over two lines."""

    some_value: Annotated[int, Meta(ge=0, description="A count.", extra_json_schema={"format": "int32"})]


class Outer(msgspec.Struct, rename="camel", kw_only=True):
    """The outer object."""

    level: Annotated[Literal["Low", "High", "Medium"], Meta(description="How much.")]
    inner: Annotated[Inner, Meta(description="Said where it is used.", extra_json_schema={"x-custom": 1})]
    plain: Inner | UnsetType = UNSET
    maybe: str | None = None
    flag: bool = False
    items: list[Inner] | UnsetType = UNSET


def test_refs_are_inlined_and_the_use_site_wins() -> None:
    schema = crdschema.structural(Outer)
    props = schema["properties"]
    assert props["inner"]["description"] == "Said where it is used."
    assert props["inner"]["x-custom"] == 1
    assert props["inner"]["properties"]["someValue"] == {
        "type": "integer",
        "format": "int32",
        "minimum": 0,
        "description": "A count.",
    }
    # Without a use-site description the docstring is the description, reflowed.
    assert props["plain"]["description"] == "An inner object, wrapped over two lines."
    assert props["items"]["items"]["type"] == "object"
    for node in crdschema.walk(schema):
        assert not {"$ref", "$defs", "anyOf", "title"} & node.keys()


def test_required_defaults_enums_and_optionals() -> None:
    schema = crdschema.structural(Outer)
    props = schema["properties"]
    assert schema["required"] == ["level", "inner"]  # UNSET and defaulted fields are optional
    assert props["flag"] == {"type": "boolean", "default": False}
    # Declaration order, not msgspec's sorted order, and typed.
    assert props["level"] == {"type": "string", "description": "How much.", "enum": ["Low", "High", "Medium"]}
    assert props["maybe"] == {"type": "string", "default": None, "nullable": True}
    assert props["plain"]["required"] == ["someValue"]
    assert "required" not in crdschema.structural(Optionals)  # msgspec's `required: []` is dropped


class Optionals(msgspec.Struct):
    """Nothing required."""

    value: str | UnsetType = UNSET


def test_keys_read_like_a_hand_written_schema() -> None:
    schema = crdschema.structural(Outer)
    assert list(schema) == ["type", "description", "properties", "required"]
    assert list(schema["properties"]["level"]) == ["type", "description", "enum"]


class Either(msgspec.Struct):
    """A union field."""

    value: int | str


class Mixed(msgspec.Struct):
    """A mixed enum."""

    value: Literal["a", 1]


@pytest.mark.parametrize("tp", [Either, Mixed])
def test_what_kubernetes_cannot_express_is_refused(tp: type) -> None:
    with pytest.raises(ValueError, match=r"union|enum"):
        crdschema.structural(tp)


def test_literal_orders_must_agree() -> None:
    class Twice(msgspec.Struct):
        """Two orders of one set."""

        a: Literal["x", "y"]
        b: Literal["y", "x"]

    with pytest.raises(ValueError, match="different orders"):
        crdschema.structural(Twice)


def test_root_schema_has_the_kubernetes_envelope() -> None:
    from varmor.models import ArmorNode

    props = crdschema.root_schema(ArmorNode)["properties"]
    assert props["metadata"] == {"type": "object"}
    assert props["apiVersion"] == {"type": "string", "description": "The versioned schema of this object."}
    assert props["kind"] == {"type": "string", "description": "The REST resource this object represents."}


def test_each_call_returns_fresh_crds() -> None:
    first = crdschema.crds()
    first[0]["spec"]["versions"][0]["additionalPrinterColumns"].clear()
    second = crdschema.crds()
    assert second[0]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["spec"]["names"]["kind"] for c in second] == [
        api.VARMOR_POLICY.kind,
        api.VARMOR_CLUSTER_POLICY.kind,
        api.ARMOR_PROFILE.kind,
        api.ARMOR_NODE.kind,
        api.ARMOR_BEHAVIOR.kind,
        api.ARMOR_PROFILE_MODEL.kind,
    ]
