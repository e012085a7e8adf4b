"""Built-in rule catalog (pure: reads only the packaged rule data)."""

from varmor.rules.catalog import (
    CATEGORIES,
    DISK_DEVICES_VAR,
    Catalog,
    CatalogError,
    Category,
    Probe,
    Rule,
    load_catalog,
    normalize_id,
    parse_catalog,
)

__all__ = [
    "CATEGORIES",
    "DISK_DEVICES_VAR",
    "Catalog",
    "CatalogError",
    "Category",
    "Probe",
    "Rule",
    "load_catalog",
    "normalize_id",
    "parse_catalog",
]
