"""`POST /api/billing/imports` through the real API, broker and worker: the public FOCUS sample's GPU
lines land as billed line items, importing it again (or a revised export) changes no totals, and
bad uploads are 4xx with the file, line and column."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.tables.history import BilledLineItem
from tests.support import async_wait_for, read_topic

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent.parent / "data" / "billing"
SAMPLE = DATA / "focus_sample.csv.gz"


def upload(stack, *files: tuple[str, bytes], headers=None, **form) -> httpx.Response:
    return httpx.post(stack.url + "/api/billing/imports", headers=headers if headers is not None else stack.headers,
                      files=[("files", (name, body)) for name, body in files], data=form, timeout=60)


def billed_rows(stack) -> tuple[int, float]:
    with session_scope(stack.settings) as s:
        n, total = s.execute(select(func.count(), func.sum(BilledLineItem.cost_usd))).one()
    return n, float(total or 0)


def sample_rows() -> list[dict]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def as_csv(rows: list[dict]) -> bytes:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return out.getvalue().encode()


async def test_focus_sample_upload_lands_once_however_often_it_is_imported(stack):
    stack.start_worker()
    stack.start_api()
    rows = sample_rows()
    g5 = [r for r in rows if "g5.4xlarge" in r["ChargeDescription"]]
    # Credit, tax and adjustment lines are sent beside the GPU lines, and stored.
    charges = [r for r in rows if r["ChargeCategory"] in ("Credit", "Tax", "Adjustment")]
    n = len(g5) + len(charges)
    want_total = sum(float(r["EffectiveCost"]) for r in g5 + charges)

    r = upload(stack, ("focus_sample.csv.gz", SAMPLE.read_bytes()))
    assert r.status_code == 200, r.text
    report = r.json()
    assert (report["rows"], report["gpu_lines"], report["charge_lines"], report["events_sent"], report["rows_rejected"]) \
        == (len(rows), len(g5), len(charges), n, 0)
    by_category = {(t["provider"], t["charge_category"]): t for t in report["totals"]}
    aws_usage = [x for x in rows if x["ProviderName"] == "AWS" and x["ChargeCategory"] == "Usage"]
    assert by_category[("aws", "usage")]["lines"] == len(aws_usage)
    assert by_category[("aws", "usage")]["billed_usd"] == pytest.approx(sum(float(x["BilledCost"]) for x in aws_usage))

    await async_wait_for(lambda: billed_rows(stack) == (n, pytest.approx(want_total)), 60, what=f"{n} billed rows")
    with session_scope(stack.settings) as s:
        stored = s.execute(select(BilledLineItem.charge_category, func.count(), func.sum(BilledLineItem.cost_usd))
                           .group_by(BilledLineItem.charge_category)).all()
    want = defaultdict(lambda: [0, 0.0])
    for x in charges:
        want[x["ChargeCategory"].lower()][0] += 1
        want[x["ChargeCategory"].lower()][1] += float(x["EffectiveCost"])
    want["usage"] = [len(g5), sum(float(x["EffectiveCost"]) for x in g5)]
    assert {c: (k, pytest.approx(v)) for c, k, v in stored} == {c: (k, pytest.approx(v)) for c, (k, v) in want.items()}
    # The same file again, and a revised export of it: one line's cost changes, nothing is added.
    assert upload(stack, ("focus_sample.csv.gz", SAMPLE.read_bytes())).status_code == 200
    revised = [dict(x) for x in rows]
    first_g5 = next(i for i, x in enumerate(revised) if "g5.4xlarge" in x["ChargeDescription"])
    old = float(revised[first_g5]["EffectiveCost"])
    revised[first_g5]["EffectiveCost"] = str(old + 5.0)
    r = upload(stack, ("focus_revised.csv", as_csv(revised)))
    assert r.status_code == 200 and r.json()["events_sent"] == n
    await async_wait_for(lambda: billed_rows(stack) == (n, pytest.approx(want_total + 5.0)), 60,
                         what="the revised line replacing the first")
    billing = await read_topic(stack.settings, stack.settings.billing_topic)
    assert len(billing) == 3 * n  # three imports of n lines ...
    billed = await read_topic(stack.settings, stack.settings.billed_topic)
    assert len({m.key for m in billed}) == n  # ... under n line identities
    await asyncio.sleep(1.0)
    assert billed_rows(stack)[0] == n


async def test_bad_uploads_are_4xx_with_what_is_wrong_and_where(stack):
    stack.start_api()
    rows = sample_rows()[:3]
    assert upload(stack, ("x.csv", as_csv(rows)), headers={}).status_code == 401
    tenant_key = stack.create_key("acme")
    r = upload(stack, ("x.csv", as_csv(rows)), headers={"Authorization": f"Bearer {tenant_key}"})
    assert r.status_code == 403

    r = upload(stack, ("notes.csv", b"name,colour\nx,red\n"))
    assert r.status_code == 422 and "notes.csv: not a FOCUS, AWS CUR 2.0, GCP or Azure export" in r.json()["detail"]
    r = upload(stack, ("eur.csv", as_csv([{**x, "BillingCurrency": "EUR"} for x in rows])))
    assert r.status_code == 422 and "costs are in EUR" in r.json()["detail"]
    r = upload(stack, ("x.csv", as_csv(rows)), format="oracle-csv")
    assert r.status_code == 422 and "unknown format 'oracle-csv'" in r.json()["detail"]

    all_bad = [{**x, "ChargePeriodEnd": "soon"} for x in rows]
    r = upload(stack, ("late.csv", as_csv(all_bad)))
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "every one of the 3 rows was rejected" in detail["message"]
    assert [(e["file"], e["line"], e["column"]) for e in detail["errors"]] == [
        ("late.csv", 2, "ChargePeriodEnd"), ("late.csv", 3, "ChargePeriodEnd"), ("late.csv", 4, "ChargePeriodEnd")]

    one_bad = [rows[0], {**rows[1], "BilledCost": "n/a"}, rows[2]]
    r = upload(stack, ("mixed.csv", as_csv(one_bad)), usd_rate="1")
    assert r.status_code == 200
    assert r.json()["rows_rejected"] == 1 and r.json()["errors"][0]["line"] == 3
    assert r.json()["errors"][0]["column"] == "BilledCost"
