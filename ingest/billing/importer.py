"""Import billing export files: read rows (streaming), parse them with their format, send GPU
instance usage lines and the credit, tax and adjustment lines beside them as `BillingEvent`s to
`gpu.billing`, and report the rest.

- A GPU line is a usage line whose instance type is a GPU instance of the pricing catalog (an
  unlisted size of a listed AWS or GCP family counts too). Its `cost_usd` is the line's effective
  cost (commitments amortised); billed and list cost travel beside it as extra fields.
- A charge line is a credit, tax or adjustment line (`CHARGES_SENT`), of any service: sent with its
  `charge_category`, its effective cost (a credit is negative), `gpu_count` 0, and the GPU model of
  its instance where it names a GPU instance, else "none". Its tenant comes from its tags, else the
  mapping's account rule, else the default tenant ("unassigned"): an account-wide credit lands on
  the tenant its account maps to. Purchase lines are not sent: a commitment's purchase is already
  spread into the EffectiveCost of the usage it covers, so counting it again would count it twice.
- Every other line (non-GPU usage, purchases, GPU lines with a negative cost) is counted and summed
  per provider, account and charge category, never sent; `not_metered` sums every line that is not
  a GPU usage line (charge lines included: they are billed, never metered).
- Idempotent: an event's `source` is "<format>:<line id>" where the line id hashes the columns that
  name the line in its export (never its cost), so re-importing a file, or a later export that
  revises a line, overwrites the same `cost.billed` key and database row instead of adding one. The
  n-th repeat of the same identity within one import gets "#n" (the same on every re-import).
- Malformed rows are reported with file, line and column and skipped; the rest imports. A file in a
  currency other than USD is refused unless a rate (USD per unit) is given."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from pydantic import ValidationError

from contracts.events import NO_GPU, BillingEvent, describe_error
from ingest.billing import aws_cur, azure, focus, gcp
from ingest.billing.lines import BillLine, GpuIndex, RowError
from ingest.billing.readers import ReadError, RowSource
from ingest.mapping import SourceMapping

#: Charge categories sent beside the GPU usage lines (purchases are not: see the module's doc).
CHARGES_SENT = ("credit", "tax", "adjustment")
FORMATS: dict[str, ModuleType] = {m.NAME: m for m in (focus, aws_cur, gcp, azure)}
MAX_ERRORS_KEPT = 100
SEND_CHUNK = 500          # events per producer call
ACK_EVERY = 20_000        # await Kafka's acknowledgements this often: bounded memory on huge files


class ImportRefused(ValueError):
    """A whole file that cannot be imported (format, columns, currency); nothing of it was sent."""


@dataclass
class ImportReport:
    files: dict[str, str] = field(default_factory=dict)  # file -> format
    rows: int = 0
    gpu_lines: int = 0
    charge_lines: int = 0      # credit, tax and adjustment lines sent
    events_sent: int = 0
    other_lines: int = 0
    rows_rejected: int = 0
    repeated_identities: int = 0
    gpu_billed_usd: float = 0.0
    gpu_effective_usd: float = 0.0
    gpu_list_usd: float = 0.0
    credits_usd: float = 0.0   # credit lines plus credits carried on lines (GCP), negative
    errors: list[dict] = field(default_factory=list)
    # (provider, charge category) -> [lines, billed, effective] over every row that parsed
    totals: dict[tuple[str, str], list] = field(default_factory=dict)
    # (provider, account, charge category) -> [lines, billed] of what is not metered
    not_metered: dict[tuple[str, str, str], list] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def error(self, file: str, line: int, column: str | None, message: str) -> None:
        self.rows_rejected += 1
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append({"file": file, "line": line, "column": column, "message": message})

    def to_dict(self) -> dict:
        return {
            "files": self.files, "rows": self.rows, "gpu_lines": self.gpu_lines,
            "charge_lines": self.charge_lines, "events_sent": self.events_sent,
            "other_lines": self.other_lines, "rows_rejected": self.rows_rejected,
            "repeated_identities": self.repeated_identities,
            "gpu_billed_usd": self.gpu_billed_usd, "gpu_effective_usd": self.gpu_effective_usd,
            "gpu_list_usd": self.gpu_list_usd, "credits_usd": self.credits_usd,
            "totals": [{"provider": p, "charge_category": c, "lines": n, "billed_usd": b, "effective_usd": e}
                       for (p, c), (n, b, e) in sorted(self.totals.items())],
            "not_metered": [{"provider": p, "account": a, "charge_category": c, "lines": n, "billed_usd": b}
                            for (p, a, c), (n, b) in sorted(self.not_metered.items())],
            "errors": self.errors, "elapsed_s": self.elapsed_s,
            "rows_per_s": self.rows / self.elapsed_s if self.elapsed_s else None,
        }


def detect_format(columns: Iterable[str], name: str) -> ModuleType:
    cols = set(columns)
    for module in FORMATS.values():
        if module.looks_like(cols):
            return module
    raise ImportRefused(f"{name}: not a FOCUS, AWS CUR 2.0, GCP or Azure export (columns start "
                        f"{', '.join(list(columns)[:6])}); give --format if it is one")


def _name(value: str, limit: int = 200) -> str:
    """A contract Name: no control characters, at most 200 characters (a long ARN keeps a hash)."""
    value = "".join(ch for ch in value if ch >= " " and ch != "\x7f").strip()
    if len(value) > limit:
        digest = hashlib.blake2b(value.encode(), digest_size=6).hexdigest()
        value = value[: limit - 13] + "~" + digest
    return value


class Importer:
    """One import run over one or more files; `report` holds what it did."""

    def __init__(self, mapping: SourceMapping | None = None, producer=None, usd_rate: float | None = None,
                 gpu_index: GpuIndex | None = None, on_progress: Callable[[RowSource], None] | None = None,
                 keep_sent: bool = True):
        self.mapping = mapping or SourceMapping()
        self.producer = producer
        self.usd_rate = usd_rate
        self.gpus = gpu_index or GpuIndex()
        self.on_progress = on_progress
        self.report = ImportReport()
        self.sent: list[BillingEvent] = []  # kept only without a producer (the API sends them after parsing)
        self.keep_sent = keep_sent
        self._occurrences: dict[str, int] = {}
        self._pending: list = []
        self._unacked: list = []

    async def import_file(self, path: str | Path, fmt: str = "auto", display_name: str | None = None) -> None:
        started = time.perf_counter()
        source = RowSource(path, display_name)
        rows = source.rows()
        module = FORMATS.get(fmt) if fmt != "auto" else None
        if fmt != "auto" and module is None:
            raise ImportRefused(f"unknown format {fmt!r}: one of auto, {', '.join(FORMATS)}")
        currency: str | None = None
        report = self.report
        try:
            for line_no, row in rows:
                report.rows += 1
                if module is None or not report.files.get(source.name):
                    module = module or detect_format(source.columns, source.name)
                    missing = [c for c in module.REQUIRED if c not in source.columns]
                    if missing:
                        raise ImportRefused(f"{source.name}: missing column(s) {', '.join(missing)} of the "
                                            f"{module.NAME} format")
                    report.files[source.name] = module.NAME
                if "__error__" in row:
                    report.error(source.name, line_no, None, row["__error__"])
                    continue
                try:
                    line = module.parse(row)
                except RowError as exc:
                    report.error(source.name, line_no, exc.column, exc.message)
                    continue
                if currency is None:
                    currency = line.currency.upper()
                    if currency != "USD" and self.usd_rate is None:
                        raise ImportRefused(f"{source.name}: costs are in {currency}, not USD; give the rate "
                                            f"(--usd-rate, USD per {currency}) to import it")
                elif line.currency.upper() != currency:
                    report.error(source.name, line_no, "currency", f"{line.currency} in a {currency} file")
                    continue
                problem = self._take(line, module.NAME)
                if problem:
                    report.error(source.name, line_no, None, problem)
                if len(self._pending) >= SEND_CHUNK:
                    await self._flush()
                if self.on_progress is not None and report.rows % 2000 == 0:
                    self.on_progress(source)
                    await asyncio.sleep(0)  # let the producer's I/O run
            if not report.files.get(source.name):
                raise ImportRefused(f"{source.name}: no rows")
            await self._flush(wait=True)
        except ReadError as exc:
            raise ImportRefused(str(exc)) from exc
        finally:
            rows.close()
            report.elapsed_s += time.perf_counter() - started
            if self.on_progress is not None:
                self.on_progress(source)

    def _take(self, line: BillLine, fmt: str) -> str | None:
        """Count the line; queue a BillingEvent for a GPU usage line or a charge line (credit, tax,
        adjustment). Returns a problem, if any."""
        report = self.report
        rate = 1.0 if line.currency.upper() == "USD" else self.usd_rate
        billed, effective = line.billed * rate, line.effective * rate
        total = report.totals.setdefault((line.provider, line.charge_category), [0, 0.0, 0.0])
        total[0] += 1
        total[1] += billed
        total[2] += effective
        if line.charge_category == "credit":
            report.credits_usd += billed
        report.credits_usd += line.credits * rate
        usage = line.charge_category == "usage"
        charge = line.charge_category in CHARGES_SENT
        gpu = self.gpus.lookup(line.provider, line.instance_type, line.gpu_count) \
            if (usage or charge) and line.instance_type else None
        if not usage or gpu is None or effective < 0:
            bucket = report.not_metered.setdefault((line.provider, line.account, line.charge_category), [0, 0.0])
            bucket[0] += 1
            bucket[1] += billed
            if not charge:
                report.other_lines += 1
                return None
        line_id = line.line_id()
        seen = self._occurrences.get(line_id, 0)
        self._occurrences[line_id] = seen + 1
        if seen:
            report.repeated_identities += 1
            line_id = f"{line_id}#{seen + 1}"
        tenant = self.mapping.billing.tenant_for(line.tags, line.account, line.billing_account)
        service = self.mapping.billing.service_for(line.tags)
        extras = {"line_id": line_id, "billed_cost_usd": billed, "effective_cost_usd": effective,
                  "account": _name(line.account) or "unknown", "service_name": line.service_name[:200]}
        if line.list is not None:
            extras["list_cost_usd"] = line.list * rate
        if usage and not gpu.exact:
            extras["gpu_count_assumed"] = line.gpu_count is None
        if usage:
            instance_type, gpu_model, gpu_count = _name(line.instance_type), gpu.gpu_model, gpu.gpu_count
            instance_id = _name(line.resource_id) or _name(f"{line.account}/{line.instance_type}")
        else:  # a charge: no GPU time; the GPU model of the instance it names, if any
            instance_type = _name(line.instance_type) or NO_GPU
            gpu_model, gpu_count = (gpu.gpu_model if gpu is not None else NO_GPU), 0
            instance_id = _name(line.resource_id) or _name(f"{line.account or 'account'}/{line.charge_category}")
        try:
            event = BillingEvent(
                ts=line.period_start, tenant=_name(tenant) or "unassigned", service=_name(service) or "unassigned",
                cloud=line.provider, region=_name(line.region) or "global", instance_type=instance_type,
                gpu_model=gpu_model, instance_id=instance_id, charge_category=line.charge_category,
                period_start=line.period_start, period_end=line.period_end, gpu_count=gpu_count,
                cost_usd=effective, pricing=line.pricing, source=f"{fmt}:{line_id}", **extras)
        except ValidationError as exc:
            return f"breaks the billing event contract: {describe_error(exc)}"
        if usage:
            report.gpu_lines += 1
            report.gpu_billed_usd += billed
            report.gpu_effective_usd += effective
            report.gpu_list_usd += (line.list * rate) if line.list is not None else 0.0
        else:
            report.charge_lines += 1
        self._pending.append(event)
        return None

    async def _flush(self, wait: bool = False) -> None:
        batch, self._pending = self._pending, []
        if batch:
            if self.producer is None:
                if self.keep_sent:
                    self.sent.extend(batch)
            else:
                self._unacked.extend(await self.producer.send_billing(batch, wait=False))
            self.report.events_sent += len(batch)
        if self._unacked and (wait or len(self._unacked) >= ACK_EVERY):
            await asyncio.gather(*self._unacked)
            self._unacked.clear()


async def import_files(paths: Iterable[str | Path], fmt: str = "auto", mapping: SourceMapping | None = None,
                       producer=None, usd_rate: float | None = None, on_progress=None) -> Importer:
    importer = Importer(mapping, producer, usd_rate, on_progress=on_progress)
    for path in paths:
        await importer.import_file(path, fmt)
    return importer
