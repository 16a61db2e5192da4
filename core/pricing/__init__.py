"""The pricing catalog: what a GPU-hour costs on each cloud instance, shipped as data.

In: catalog.csv (instance prices, each row with its source and as-of date) and gpu_specs.csv
(memory, bandwidth, dense throughput). Out: `default_catalog().gpu_hour_price(...)`, the one
pricing lookup; the stream processor meters every usage event with it and the recommender
ranks instances with it."""

from core.pricing.catalog import (
    CATALOG_COLUMNS,
    CatalogFormatError,
    CatalogRow,
    GPUSpec,
    PriceCatalog,
    PriceQuote,
    PricingError,
    UnknownGPUModel,
    canonical_gpu_model,
    default_catalog,
    read_catalog_csv,
)

__all__ = [
    "CATALOG_COLUMNS", "CatalogFormatError", "CatalogRow", "GPUSpec", "PriceCatalog",
    "PriceQuote", "PricingError", "UnknownGPUModel", "canonical_gpu_model", "default_catalog",
    "read_catalog_csv",
]
