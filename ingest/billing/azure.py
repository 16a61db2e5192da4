"""Azure cost details (Cost Management exports, actual or amortized cost, CSV; EA and MCA column
names). A row is one meter for one resource and one day.

Columns read: CostInBillingCurrency (EA: Cost), BillingCurrencyCode (or BillingCurrency), Date
(MM/DD/YYYY or ISO), ResourceId (or InstanceName), SubscriptionId, BillingAccountId,
MeterCategory, MeterSubCategory, MeterId, MeterName, ResourceLocation, ChargeType, PricingModel
(OnDemand, Spot, Reservation, SavingsPlan), PayGPrice x Quantity (list cost), Tags (JSON, with or
without braces), AdditionalInfo (JSON: ServiceType is the VM size, e.g. Standard_ND96asr_v4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingest.billing.lines import BillLine, RowError, json_object, money, string_tags, text, timestamp

NAME = "azure"
REQUIRED = ("Date",)
SIGNATURE = {"Date", "MeterCategory"}
DAY_S = 86400.0

_CATEGORIES = {"usage": "usage", "purchase": "purchase", "refund": "credit", "tax": "tax",
               "roundingadjustment": "adjustment", "unusedreservation": "adjustment", "unusedsavingsplan": "adjustment"}
_PRICING = {"ondemand": "on_demand", "spot": "spot", "reservation": "reserved", "savingsplan": "reserved"}


def looks_like(columns: set[str]) -> bool:
    return SIGNATURE <= columns and bool({"CostInBillingCurrency", "Cost", "CostInUsd"} & columns)


def parse(row: Mapping[str, Any]) -> BillLine:
    cost_column = next((c for c in ("CostInBillingCurrency", "Cost", "CostInUsd") if c in row), None)
    if cost_column is None:
        raise RowError("CostInBillingCurrency", "missing (or Cost)")
    cost = money(row, cost_column)
    currency = text(row, "BillingCurrencyCode") or text(row, "BillingCurrency") or (
        "USD" if cost_column == "CostInUsd" else "")
    if not currency:
        raise RowError("BillingCurrencyCode", "is empty; the currency is required")
    charge_type = text(row, "ChargeType") or "Usage"
    category = _CATEGORIES.get(charge_type.lower())
    if category is None:
        raise RowError("ChargeType", f"{charge_type!r} is not a known Azure charge type")
    pricing_model = text(row, "PricingModel")
    pricing = _PRICING.get(pricing_model.lower().replace(" ", ""), "on_demand")
    info = json_object(row, "AdditionalInfo")
    instance_type = str(info.get("ServiceType") or "")
    start = timestamp(row, "Date")
    payg, quantity = money(row, "PayGPrice", required=False), money(row, "Quantity", required=False)
    resource = text(row, "ResourceId") or text(row, "InstanceName")
    identity = (text(row, "BillingAccountId"), text(row, "SubscriptionId"), resource.lower(), start,
                text(row, "MeterId"), charge_type, pricing_model, text(row, "ReservationId") or text(row, "benefitId"),
                text(row, "ProductOrderId"), text(row, "Frequency"))
    return BillLine(
        provider="azure", account=text(row, "SubscriptionId") or text(row, "BillingAccountId"),
        billing_account=text(row, "BillingAccountId"), resource_id=resource, instance_type=instance_type,
        region=text(row, "ResourceLocation").lower().replace(" ", ""), period_start=start, period_end=start + DAY_S,
        charge_category=category, pricing=pricing, billed=cost, effective=cost,
        list=payg * quantity if payg is not None and quantity is not None else None, currency=currency,
        service_name=" / ".join(x for x in (text(row, "MeterCategory"), text(row, "MeterSubCategory")) if x),
        line_identity=identity, tags=string_tags(json_object(row, "Tags")))
