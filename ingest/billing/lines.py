"""What every billing format is read into: a `BillLine` (one line item, in the words of FOCUS), the
row error that names its column, value parsers shared by the formats, and the GPU instance index
that says which lines are GPU instances (by instance type against the pricing catalog)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

CHARGE_CATEGORIES = ("usage", "purchase", "tax", "credit", "adjustment")


class RowError(ValueError):
    """A row that cannot be imported: which column and why (the importer adds file and line)."""

    def __init__(self, column: str | None, message: str):
        super().__init__(f"column {column}: {message}" if column else message)
        self.column = column
        self.message = message


@dataclass(slots=True)
class BillLine:
    """One line item of any export, normalised. Costs are in the file's currency until the
    importer converts them; `effective` is what the line cost after commitment discounts
    (amortised), `billed` what was invoiced, `list` the public on-demand price."""

    provider: str            # gpucost's cloud name: aws, gcp, azure, oracle, ...
    account: str             # sub-account (AWS account, GCP project, Azure subscription), else billing account
    billing_account: str
    resource_id: str
    instance_type: str
    region: str
    period_start: float
    period_end: float
    charge_category: str     # one of CHARGE_CATEGORIES
    pricing: str             # on_demand | spot | reserved
    billed: float
    effective: float
    list: float | None
    currency: str
    service_name: str
    line_identity: tuple     # the columns that name this line in its export (never its cost)
    tags: dict[str, str] = field(default_factory=dict)
    gpu_count: int | None = None  # where the export says (FOCUS SkuPriceDetails.GpuCount)
    credits: float = 0.0     # credits carried on the line itself (GCP), negative

    def line_id(self) -> str:
        """A stable 20-hex-digit identity: the same line in a re-import or a revised export
        (same identity columns, new cost) gets the same id, so it overwrites instead of adding."""
        raw = json.dumps(self.line_identity, separators=(",", ":"), default=str)
        return hashlib.blake2b(raw.encode(), digest_size=10).hexdigest()


# -- value parsers: each raises RowError naming the column --------------------------------------

def text(row: Mapping[str, Any], column: str, required: bool = False) -> str:
    value = row.get(column)
    if value is None or value == "":
        if required:
            raise RowError(column, "is empty")
        return ""
    return str(value).strip()


def money(row: Mapping[str, Any], column: str, required: bool = True) -> float | None:
    value = row.get(column)
    if value is None or value == "":
        if required:
            raise RowError(column, "is empty; a cost is required")
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(column, f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise RowError(column, f"{value!r} is not a finite number")
    return number


def timestamp(row: Mapping[str, Any], column: str) -> float:
    """Epoch seconds of ISO 8601 ("2024-09-01T00:00:00Z", "2024-09-01 00:00:00", "... UTC"),
    US dates ("09/18/2024", Azure), or a datetime (Parquet); a time without zone is UTC."""
    value = row.get(column)
    if value is None or value == "":
        raise RowError(column, "is empty; a time is required")
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    else:
        seconds = _epoch(str(value).strip())
        if seconds is None:
            raise RowError(column, f"{value!r} is not a date-time (ISO 8601 or MM/DD/YYYY)")
        return seconds
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


@lru_cache(maxsize=8192)  # an export repeats the same few hundred period boundaries on every line
def _epoch(s: str) -> float | None:
    if s.endswith(" UTC"):
        s = s[:-4]
    try:
        if re.fullmatch(r"\d{1,2}/\d{1,2}/\d{4}", s):
            moment = dt.datetime.strptime(s, "%m/%d/%Y")
        else:
            moment = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def json_object(row: Mapping[str, Any], column: str) -> dict[str, Any]:
    """A JSON object column (FOCUS Tags, SkuPriceDetails; Azure AdditionalInfo, Tags). Azure EA
    writes tags without the braces; a list of {key, value} (GCP labels) becomes a dict."""
    value = row.get(column)
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, (list, tuple)):
        return _pairs(value)
    s = str(value).strip()
    if not s.startswith(("{", "[")):
        s = "{" + s + "}"
    try:
        parsed = json.loads(s)
    except ValueError as exc:
        raise RowError(column, f"is not a JSON object: {exc.msg} at character {exc.pos}") from None
    if isinstance(parsed, list):
        return _pairs(parsed)
    if not isinstance(parsed, dict):
        raise RowError(column, "is not a JSON object")
    return parsed


def _pairs(items) -> dict[str, Any]:
    """[{key, value}, ...] (GCP labels) or [(key, value), ...] (a Parquet map column, CUR 2.0 tags)."""
    out = {}
    for item in items:
        if isinstance(item, dict) and "key" in item:
            out[str(item["key"])] = item.get("value")
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            out[str(item[0])] = item[1]
    return out


def string_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in tags.items() if v is not None}


PROVIDERS = {
    "aws": "aws", "amazon web services": "aws", "amazon web services, inc.": "aws", "amazon": "aws",
    "microsoft": "azure", "azure": "azure", "microsoft azure": "azure",
    "google cloud": "gcp", "google": "gcp", "gcp": "gcp", "google cloud platform": "gcp",
    "oracle": "oracle", "oracle cloud infrastructure": "oracle", "oci": "oracle",
}


def cloud_name(provider: str) -> str:
    p = provider.strip().lower()
    return PROVIDERS.get(p, re.sub(r"[^a-z0-9]+", "-", p).strip("-") or "unknown")


# -- which lines are GPU instances --------------------------------------------------------------

_AWS_INSTANCE = re.compile(r"\b([a-z][a-z0-9-]*\d[a-z0-9-]*\.(?:\d*x?large|metal(?:-\d+xl)?|medium|small|micro|nano))\b")


def instance_in_text(description: str) -> str:
    """An AWS-style instance type inside a description ("... On Demand Linux g5.4xlarge Instance Hour")."""
    m = _AWS_INSTANCE.search(description or "")
    return m.group(1) if m else ""


@dataclass(frozen=True, slots=True)
class GpuInstance:
    gpu_model: str
    gpu_count: int
    exact: bool  # the instance type is in the catalog (else its family is, and the count may be assumed)


class GpuIndex:
    """GPU instance types of the pricing catalog: exact (cloud, instance type) and, for sizes the
    catalog does not list, AWS and GCP families (`g5.4xlarge` is an A10G like every `g5`)."""

    def __init__(self, catalog=None):
        from core.pricing import default_catalog
        from core.pricing.catalog import _key

        catalog = catalog or default_catalog()
        self._key = _key
        self.exact: dict[tuple[str, str], GpuInstance] = {}
        self.family: dict[tuple[str, str], str] = {}
        for row in catalog.rows:
            cloud, _, instance = _key(row.cloud, "", row.instance_type)
            self.exact[(cloud, instance)] = GpuInstance(row.gpu_model, row.gpu_count, True)
            fam = self._family(cloud, instance)
            if fam:
                self.family.setdefault((cloud, fam), row.gpu_model)

    @staticmethod
    def _family(cloud: str, instance: str) -> str:
        if cloud == "aws" and "." in instance:
            return instance.split(".", 1)[0]
        if cloud == "gcp" and instance.count("-") >= 2:
            return instance.rsplit("-", 1)[0]
        return ""

    def lookup(self, cloud: str, instance_type: str, gpu_count: int | None = None) -> GpuInstance | None:
        if not instance_type:
            return None
        cloud, _, instance = self._key(cloud, "", instance_type)
        hit = self.exact.get((cloud, instance))
        if hit is not None:
            return hit
        fam = self._family(cloud, instance)
        model = self.family.get((cloud, fam)) if fam else None
        if model is None:
            return None
        if gpu_count is None and cloud == "gcp":
            m = re.search(r"-(\d+)g$", instance)
            gpu_count = int(m.group(1)) if m else None
        return GpuInstance(model, gpu_count or 1, False)
