"""Price overrides stored with SQLAlchemy replace the catalog price in every lookup."""

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from core.tables.base import Base
from core.pricing import PricingError, UnknownGPUModel, default_catalog
from core.pricing.overrides import (
    OverrideRequest,
    catalog_with_overrides,
    delete_override,
    list_overrides,
    set_override,
)


@pytest.fixture
def session():
    import core.tables.pricing  # noqa: F401  (registers the table on Base)

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine, tables=[Base.metadata.tables["pricing_overrides"]])
    with Session(engine) as s:
        yield s


def test_override_replaces_the_catalog_price_and_is_flagged(session):
    set_override(session, OverrideRequest("aws", "us-east-1", "p5.48xlarge", on_demand_usd_h=40.0,
                                          note="EDP discount"))
    quote = catalog_with_overrides(session).gpu_hour_price("aws", "us-east-1", "p5.48xlarge", "H100-80GB")
    assert quote.usd_per_gpu_hour == pytest.approx(5.0)  # 40 / 8 GPUs, copied from the catalog row
    assert quote.override and not quote.fallback and "EDP discount" in quote.source


def test_setting_again_replaces_and_deleting_restores_the_catalog(session):
    set_override(session, OverrideRequest("aws", "us-east-1", "p5.48xlarge", on_demand_usd_h=40.0))
    set_override(session, OverrideRequest("AWS", "US-EAST-1", "P5.48XLARGE", on_demand_usd_h=32.0))
    assert len(list_overrides(session)) == 1
    assert catalog_with_overrides(session).gpu_hour_price(
        "aws", "us-east-1", "p5.48xlarge", "H100-80GB").usd_per_gpu_hour == pytest.approx(4.0)
    assert delete_override(session, "aws", "us-east-1", "p5.48xlarge")
    assert catalog_with_overrides(session).gpu_hour_price(
        "aws", "us-east-1", "p5.48xlarge", "H100-80GB").usd_per_gpu_hour == pytest.approx(55.04 / 8)


def test_override_can_add_a_private_instance(session):
    set_override(session, OverrideRequest("onprem", "dc1", "dgx-h100", on_demand_usd_h=16.0,
                                          gpu_model="H100", gpu_count=8))
    quote = catalog_with_overrides(session).gpu_hour_price("onprem", "dc1", "dgx-h100", "H100-80GB")
    assert quote.usd_per_gpu_hour == pytest.approx(2.0) and quote.override


def test_override_of_unknown_instance_needs_the_gpu(session):
    with pytest.raises(PricingError):
        set_override(session, OverrideRequest("onprem", "dc1", "box", on_demand_usd_h=1.0))
    with pytest.raises(UnknownGPUModel):
        set_override(session, OverrideRequest("onprem", "dc1", "box", on_demand_usd_h=1.0,
                                              gpu_model="Voodoo2", gpu_count=1))


def test_override_rejects_non_positive_prices(session):
    with pytest.raises(PricingError):
        set_override(session, OverrideRequest("aws", "us-east-1", "p5.48xlarge", on_demand_usd_h=-1.0))


def test_without_overrides_the_shipped_catalog_is_returned(session):
    assert catalog_with_overrides(session) is default_catalog()
