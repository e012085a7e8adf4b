"""The field readers every part of policy parsing uses: one error type naming the field's
path, and typed getters that refuse what the API's schema would (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class PolicyError(ValueError):
    """Invalid policy; the message starts with the offending field's path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = message


def mapping(value: Any, path: str, *, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise PolicyError(path, "must be an object" if value is not None else "is required")
    return value


def only(obj: Mapping[str, Any], allowed: Sequence[str], path: str, why: str = "") -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise PolicyError(f"{path}.{unknown[0]}", why or "unknown field")


def string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise PolicyError(path, "must be a non-empty string")
    return value


def bool_field(value: Any, path: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise PolicyError(path, "must be true or false")
    return value


def list_field(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(path, "must be a list")
    return value


def strings(value: Any, path: str) -> list[str]:
    items = list_field(value, path)
    for i, item in enumerate(items):
        string(item, f"{path}[{i}]")
    return items
