"""The product catalog and starting stock, read from a JSON file (EDPO_CATALOG)."""

from __future__ import annotations

from pathlib import Path

import msgspec


class CatalogItem(msgspec.Struct, frozen=True, kw_only=True):
    """A SKU orders may contain, with its name and starting stock."""

    sku: str
    name: str = ""
    stock: int = 0


class Catalog(msgspec.Struct, frozen=True, kw_only=True):
    """The SKUs orders may contain (GET /catalog)."""

    skus: list[CatalogItem]

    @property
    def sku_set(self) -> set[str]:
        return {item.sku for item in self.skus}


def load_catalog(path: Path) -> Catalog:
    """Parse and validate the catalog file; a broken file stops the service with a clear error."""
    try:
        catalog = msgspec.json.decode(path.read_bytes(), type=Catalog)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
        raise SystemExit(f"catalog {path}: {e}") from None
    if any(item.stock < 0 for item in catalog.skus):
        raise SystemExit(f"catalog {path}: starting stock must not be negative")
    return catalog
