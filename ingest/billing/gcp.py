"""Google Cloud detailed usage cost export (the BigQuery billing export's `gcp_billing_export_resource_v1`
table, exported as newline-delimited JSON with nested records, or as CSV with dotted column names
and JSON text for the repeated fields).

Columns read: billing_account_id, service.description, sku.id, sku.description,
usage_start_time, usage_end_time, project.id, labels, system_labels (its
`compute.googleapis.com/machine_spec` is the instance type), location.region, resource.name,
resource.global_name, cost, currency, cost_type (regular, tax, adjustment, rounding error), credits
(each with amount and type; a committed use discount makes the line reserved)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ingest.billing.lines import BillLine, RowError, json_object, money, string_tags, text, timestamp

NAME = "gcp"
REQUIRED = ("cost", "usage_start_time", "usage_end_time", "currency")
SIGNATURE = {"cost", "usage_start_time", "currency"}

_CATEGORIES = {"regular": "usage", "tax": "tax", "adjustment": "adjustment", "rounding error": "adjustment"}
MACHINE_SPEC = "compute.googleapis.com/machine_spec"


def looks_like(columns: set[str]) -> bool:
    return SIGNATURE <= columns and ("sku.description" in columns or "sku" in columns or "billing_account_id" in columns)


def field(row: Mapping[str, Any], dotted: str) -> Any:
    """`sku.description` from a CSV's dotted column or a JSON row's nested record."""
    if dotted in row:
        return row[dotted]
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _credits(row: Mapping[str, Any]) -> list[dict]:
    raw = row.get("credits")
    if raw is None or raw == "" or raw == []:
        return []
    if isinstance(raw, str):
        import json

        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise RowError("credits", f"is not a JSON array: {exc.msg}") from None
    if not isinstance(raw, list):
        raise RowError("credits", "is not an array of credits")
    return [c for c in raw if isinstance(c, dict)]


def parse(row: Mapping[str, Any]) -> BillLine:
    flat = {k: field(row, k) for k in ("sku.description", "sku.id", "service.description", "service.id",
                                         "project.id", "location.region", "location.location",
                                         "resource.name", "resource.global_name")}
    cost_type = text(row, "cost_type") or "regular"
    category = _CATEGORIES.get(cost_type.lower())
    if category is None:
        raise RowError("cost_type", f"{cost_type!r} is not one of regular, tax, adjustment, rounding error")
    cost = money(row, "cost")
    credits = _credits(row)
    try:
        credit_usd = sum(float(c.get("amount") or 0) for c in credits)
    except (TypeError, ValueError):
        raise RowError("credits", "a credit amount is not a number") from None
    sku = text(flat, "sku.description")
    system = json_object(row, "system_labels")
    reserved = any(str(c.get("type", "")).startswith("COMMITTED_USAGE_DISCOUNT") for c in credits)
    pricing = "reserved" if reserved else "spot" if ("Spot" in sku or "Preemptible" in sku) else "on_demand"
    start, end = timestamp(row, "usage_start_time"), timestamp(row, "usage_end_time")
    labels = string_tags(json_object(row, "labels"))
    identity = (text(row, "billing_account_id"), text(flat, "project.id"), text(flat, "service.id"),
                text(flat, "sku.id"), start, end, text(flat, "resource.global_name"), text(flat, "resource.name"),
                sorted(labels.items()), sorted(string_tags(system).items()), cost_type,
                text(flat, "location.location"))
    return BillLine(
        provider="gcp", account=text(flat, "project.id") or text(row, "billing_account_id"),
        billing_account=text(row, "billing_account_id"),
        resource_id=text(flat, "resource.global_name") or text(flat, "resource.name"),
        instance_type=str(system.get(MACHINE_SPEC) or ""),
        region=text(flat, "location.region") or text(flat, "location.location"),
        period_start=start, period_end=end, charge_category=category, pricing=pricing,
        billed=cost, effective=cost + credit_usd, list=None, currency=text(row, "currency", required=True),
        service_name=text(flat, "service.description"), line_identity=identity, tags=labels, credits=credit_usd)
