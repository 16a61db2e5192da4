"""FOCUS 1.0 to 1.3 (the FinOps Open Cost and Usage Specification) cost and usage rows.

Columns read: BilledCost, EffectiveCost, ListCost, BillingCurrency, ChargePeriodStart/End,
ChargeCategory, ChargeClass, ChargeDescription, PricingCategory, CommitmentDiscountStatus,
ResourceId, RegionId, ServiceName, SkuId, SkuPriceId, SkuPriceDetails (1.1+: InstanceType,
GpuCount), Tags (JSON), BillingAccountId, SubAccountId, ProviderName (1.0-1.2) or
ServiceProviderName (1.3). NULL (literal or empty) is missing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingest.billing.lines import (BillLine, RowError, cloud_name, instance_in_text, json_object, money,
                                  string_tags, text, timestamp)

NAME = "focus"
REQUIRED = ("BilledCost", "ChargePeriodStart", "ChargePeriodEnd", "ChargeCategory", "BillingCurrency")
SIGNATURE = {"BilledCost", "ChargePeriodStart", "ChargeCategory"}

_CATEGORIES = {"usage": "usage", "purchase": "purchase", "tax": "tax", "credit": "credit", "adjustment": "adjustment"}
_PRICING = {"standard": "on_demand", "dynamic": "spot", "committed": "reserved", "other": "on_demand"}


def looks_like(columns: set[str]) -> bool:
    return SIGNATURE <= columns


def parse(row: Mapping[str, Any]) -> BillLine:
    category = text(row, "ChargeCategory", required=True)
    charge_category = _CATEGORIES.get(category.lower())
    if charge_category is None:
        raise RowError("ChargeCategory", f"{category!r} is not one of Usage, Purchase, Tax, Credit, Adjustment")
    billed = money(row, "BilledCost")
    effective = money(row, "EffectiveCost", required=False)
    list_cost = money(row, "ListCost", required=False)
    pricing_category = text(row, "PricingCategory")
    pricing = _PRICING.get(pricing_category.lower(), "on_demand")
    if text(row, "CommitmentDiscountStatus").lower() == "used":
        pricing = "reserved"
    details = json_object(row, "SkuPriceDetails")
    instance_type = str(details.get("InstanceType") or details.get("x_InstanceType") or "")
    if not instance_type:
        instance_type = text(row, "x_InstanceType") or instance_in_text(text(row, "ChargeDescription"))
    gpu_count = details.get("GpuCount")
    try:
        gpu_count = int(gpu_count) if gpu_count not in (None, "") else None
    except (TypeError, ValueError):
        raise RowError("SkuPriceDetails", f"GpuCount {gpu_count!r} is not an integer") from None
    provider = text(row, "ServiceProviderName") or text(row, "ProviderName") or text(row, "InvoiceIssuerName")
    start, end = timestamp(row, "ChargePeriodStart"), timestamp(row, "ChargePeriodEnd")
    billing_account = text(row, "BillingAccountId")
    resource = text(row, "ResourceId")
    identity = (provider, billing_account, text(row, "SubAccountId"), resource, start, end, category,
                text(row, "ChargeClass"), text(row, "ChargeDescription"), text(row, "SkuId"), text(row, "SkuPriceId"),
                pricing_category, text(row, "CommitmentDiscountId"), text(row, "RegionId"), text(row, "ServiceName"))
    return BillLine(
        provider=cloud_name(provider), account=text(row, "SubAccountId") or billing_account,
        billing_account=billing_account, resource_id=resource, instance_type=instance_type,
        region=text(row, "RegionId") or text(row, "RegionName"), period_start=start, period_end=end,
        charge_category=charge_category, pricing=pricing, billed=billed,
        # FOCUS: EffectiveCost is BilledCost with commitment purchases amortised onto the usage.
        effective=effective if effective is not None else billed, list=list_cost,
        currency=text(row, "BillingCurrency", required=True), service_name=text(row, "ServiceName"),
        line_identity=identity, tags=string_tags(json_object(row, "Tags")), gpu_count=gpu_count)
