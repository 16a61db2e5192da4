"""AWS Cost and Usage Report 2.0 (Data Exports, CSV or Parquet; snake_case columns).

Columns read: identity_line_item_id and identity_time_interval (the line's identity),
line_item_line_item_type, line_item_unblended_cost, line_item_usage_start_date/end_date,
line_item_resource_id, line_item_usage_account_id, bill_payer_account_id, line_item_currency_code,
line_item_usage_type, line_item_product_code, product_instance_type, product_region_code (or
product_region), pricing_term, pricing_public_on_demand_cost, savings_plan_savings_plan_effective_cost,
reservation_effective_cost, resource_tags (a JSON map in CUR 2.0; `user_team` style keys)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingest.billing.lines import BillLine, RowError, json_object, money, string_tags, text, timestamp

NAME = "aws-cur2"
REQUIRED = ("line_item_unblended_cost", "line_item_usage_start_date", "line_item_usage_end_date",
            "line_item_line_item_type")
SIGNATURE = {"line_item_unblended_cost", "line_item_usage_start_date"}

# line_item_line_item_type -> FOCUS charge category
_CATEGORIES = {
    "usage": "usage", "discountedusage": "usage", "savingsplancoveredusage": "usage",
    "savingsplannegation": "adjustment",  # cancels covered usage's on-demand cost: see parse()
    "rifee": "purchase", "fee": "purchase", "savingsplanrecurringfee": "purchase", "savingsplanupfrontfee": "purchase",
    "tax": "tax", "credit": "credit", "refund": "credit", "bundleddiscount": "credit", "edpdiscount": "credit",
    "privaterateDiscount".lower(): "credit", "distributordiscount": "credit",
}


def looks_like(columns: set[str]) -> bool:
    return SIGNATURE <= columns


def parse(row: Mapping[str, Any]) -> BillLine:
    kind = text(row, "line_item_line_item_type", required=True)
    category = _CATEGORIES.get(kind.lower())
    if category is None:
        raise RowError("line_item_line_item_type", f"{kind!r} is not a known CUR line item type")
    unblended = money(row, "line_item_unblended_cost")
    # What the line cost after commitments: a covered line's effective cost (the negation line
    # that cancels its on-demand cost is an adjustment, never metered).
    if kind.lower() == "savingsplancoveredusage":
        effective = money(row, "savings_plan_savings_plan_effective_cost")
        pricing = "reserved"
    elif kind.lower() == "discountedusage":
        effective = money(row, "reservation_effective_cost")
        pricing = "reserved"
    elif kind.lower() == "savingsplannegation":
        # It cancels the covered line's on-demand (unblended) cost, which the covered line's
        # effective cost never held: nothing in effective (amortised) terms.
        effective, pricing = 0.0, "reserved"
    else:
        effective = unblended
        term = text(row, "pricing_term").lower()
        usage_type = text(row, "line_item_usage_type")
        pricing = "spot" if term == "spot" or "SpotUsage" in usage_type else "reserved" if term == "reserved" else "on_demand"
    start, end = timestamp(row, "line_item_usage_start_date"), timestamp(row, "line_item_usage_end_date")
    tags = json_object(row, "resource_tags")
    # CUR 2.0 prefixes tag keys with their origin (user_team, aws_created_by): keep both spellings.
    tags = {**{k.split("_", 1)[1]: v for k, v in tags.items() if k.startswith("user_")}, **tags}
    line_item_id = text(row, "identity_line_item_id")
    identity = ((line_item_id, text(row, "identity_time_interval")) if line_item_id else
                (text(row, "bill_payer_account_id"), text(row, "line_item_usage_account_id"),
                 text(row, "line_item_resource_id"), start, end, kind, text(row, "line_item_usage_type"),
                 text(row, "line_item_operation")))
    return BillLine(
        provider="aws", account=text(row, "line_item_usage_account_id") or text(row, "bill_payer_account_id"),
        billing_account=text(row, "bill_payer_account_id"), resource_id=text(row, "line_item_resource_id"),
        instance_type=text(row, "product_instance_type"),
        region=text(row, "product_region_code") or text(row, "product_region"),
        period_start=start, period_end=end, charge_category=category, pricing=pricing, billed=unblended,
        effective=effective, list=money(row, "pricing_public_on_demand_cost", required=False),
        currency=text(row, "line_item_currency_code") or "USD",
        service_name=text(row, "line_item_product_code"), line_identity=identity, tags=string_tags(tags))
