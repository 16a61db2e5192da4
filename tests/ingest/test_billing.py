"""The billing importers on the public FOCUS 1.0 sample and hand-written CUR 2.0, GCP and Azure
exports: totals equal the file's own sums, GPU lines carry the right instance, tenant and cost,
line identities are stable (re-import and revision never add), and bad input is reported by file,
line and column."""

from __future__ import annotations

import csv
import gzip
import json
from collections import defaultdict
from pathlib import Path

import pytest

from ingest.billing.importer import ImportRefused, Importer
from ingest.mapping import SourceMapping

DATA = Path(__file__).resolve().parent.parent / "data" / "billing"
FOCUS_SAMPLE = DATA / "focus_sample.csv.gz"
MAPPING = SourceMapping.model_validate({"billing": {
    "tenant_tags": ["team", "business_unit"], "service_tags": ["service", "application"],
    "accounts": {"research-training-4821": "research"}}})


async def run(*paths, fmt="auto", usd_rate=None, mapping=MAPPING) -> Importer:
    imp = Importer(mapping, producer=None, usd_rate=usd_rate)
    for p in paths:
        await imp.import_file(p, fmt)
    return imp


def usage_sent(imp: Importer) -> list:
    return [e for e in imp.sent if e.charge_category == "usage"]


def focus_rows() -> list[dict]:
    with gzip.open(FOCUS_SAMPLE, "rt", encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


PROVIDER = {"AWS": "aws", "Microsoft": "azure", "Oracle": "oracle"}


async def test_the_focus_sample_imports_completely_with_the_files_own_totals():
    imp = await run(FOCUS_SAMPLE)
    r = imp.report
    assert (r.rows, r.rows_rejected, r.files) == (1000, 0, {"focus_sample.csv.gz": "focus"})
    # The file's own sums, read with the csv module: per provider and charge category.
    want = defaultdict(lambda: [0, 0.0])
    for row in focus_rows():
        w = want[(PROVIDER[row["ProviderName"]], row["ChargeCategory"].lower())]
        w[0] += 1
        w[1] += float(row["BilledCost"])
    assert set(r.totals) == set(want)
    for key, (lines, billed, _) in r.totals.items():
        assert lines == want[key][0]
        assert billed == pytest.approx(want[key][1], rel=1e-12)
    # Its GPU instances: the g5.4xlarge hours (an A10G size the catalog does not list: its family is).
    g5 = [row for row in focus_rows() if "g5.4xlarge" in row["ChargeDescription"]]
    sent = usage_sent(imp)
    assert r.gpu_lines == len(sent) == len(g5) == 8
    assert {(e.instance_type, e.gpu_model, e.gpu_count, e.cloud, e.region) for e in sent} == \
        {("g5.4xlarge", "A10G", 1, "aws", "us-east-1")}
    assert sorted(e.billed_cost_usd for e in sent) == sorted(float(x["BilledCost"]) for x in g5)
    assert sorted(e.cost_usd for e in sent) == sorted(float(x["EffectiveCost"]) for x in g5)
    # Its credit and adjustment lines are sent beside them, at their effective cost; the rest is
    # reported only.
    charges = [row for row in focus_rows() if row["ChargeCategory"] in ("Credit", "Tax", "Adjustment")]
    assert r.charge_lines == len(imp.sent) - len(sent) == len(charges) == 3
    assert sorted((e.charge_category, e.cost_usd, e.billed_cost_usd, e.gpu_count) for e in imp.sent if e not in sent) \
        == sorted((x["ChargeCategory"].lower(), float(x["EffectiveCost"]), float(x["BilledCost"]), 0) for x in charges)
    assert r.events_sent == len(g5) + len(charges)
    assert r.other_lines == 1000 - len(g5) - len(charges) and r.credits_usd == pytest.approx(-2.6137)
    by_instance = {e.instance_id: e for e in sent}
    tagged = next(x for x in g5 if x["Tags"] not in ("", "NULL"))
    assert by_instance[tagged["ResourceId"]].tenant in tagged["Tags"]  # business_unit tag -> tenant


async def test_importing_twice_gives_the_same_line_identities():
    first, second = await run(FOCUS_SAMPLE), await run(FOCUS_SAMPLE)
    assert [e.source for e in first.sent] == [e.source for e in second.sent]
    assert len({(e.kafka_key, e.source) for e in first.sent}) == len(first.sent)


async def test_a_revised_line_keeps_its_identity_and_a_new_line_gets_its_own(tmp_path):
    rows = focus_rows()
    g5 = next(i for i, row in enumerate(rows) if "g5.4xlarge" in row["ChargeDescription"])
    original = await run(FOCUS_SAMPLE)
    revised_rows = [dict(r) for r in rows]
    revised_rows[g5]["BilledCost"] = "1.5"
    revised_rows[g5]["EffectiveCost"] = "1.5"
    revised = tmp_path / "revised.csv"
    with open(revised, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(revised_rows)
    again = await run(revised)
    before = {e.source: e.cost_usd for e in original.sent}
    after = {e.source: e.cost_usd for e in again.sent}
    assert set(before) == set(after)
    changed = {s for s in before if before[s] != after[s]}
    assert len(changed) == 1 and after[changed.pop()] == 1.5


async def test_parquet_and_gzip_csv_import_the_same_lines(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = focus_rows()
    # As exports write Parquet: typed costs and timestamps, real nulls.
    table = pa.table({c: [None if r[c] == "NULL" else r[c] for r in rows] for c in rows[0]})
    for c in ("BilledCost", "EffectiveCost", "ListCost"):
        table = table.set_column(table.schema.get_field_index(c), c, table[c].cast(pa.float64()))
    for c in ("ChargePeriodStart", "ChargePeriodEnd"):
        table = table.set_column(table.schema.get_field_index(c), c, table[c].cast(pa.timestamp("s")))
    pq.write_table(table, tmp_path / "focus.parquet", row_group_size=300)
    from_csv, from_parquet = await run(FOCUS_SAMPLE), await run(tmp_path / "focus.parquet")
    assert from_parquet.report.rows == 1000 and from_parquet.report.rows_rejected == 0
    assert [(e.source, e.cost_usd, e.period_start, e.tenant) for e in from_parquet.sent] == \
        [(e.source, e.cost_usd, e.period_start, e.tenant) for e in from_csv.sent]
    assert from_parquet.report.totals.keys() == from_csv.report.totals.keys()
    for k, v in from_csv.report.totals.items():
        assert from_parquet.report.totals[k][1] == pytest.approx(v[1], rel=1e-12)


async def test_aws_cur2_gpu_lines_use_effective_cost_and_the_negation_is_not_metered():
    imp = await run(DATA / "aws_cur2.csv")
    r = imp.report
    assert (r.rows, r.rows_rejected, r.files["aws_cur2.csv"]) == (10, 0, "aws-cur2")
    got = sorted((e.tenant, e.service, e.instance_id, e.instance_type, e.gpu_model, e.gpu_count, e.pricing,
                  e.cost_usd, e.region) for e in usage_sent(imp))
    assert got == [
        ("research", "trainer", "i-0a1b2c3d4e5f60001", "p5.48xlarge", "H100-80GB", 8, "on_demand", 55.04, "us-east-1"),
        ("research", "trainer", "i-0a1b2c3d4e5f60001", "p5.48xlarge", "H100-80GB", 8, "on_demand", 55.04, "us-east-1"),
        ("serving", "embedder", "i-0c3d4e5f6a7b80003", "g6e.12xlarge", "L40S", 4, "spot", 4.1327, "us-east-1"),
        ("serving", "llm-api", "i-0f9e8d7c6b5a40002", "p5.48xlarge", "H100-80GB", 8, "reserved", 38.528, "us-east-1"),
    ]
    covered = next(e for e in usage_sent(imp) if e.pricing == "reserved")
    assert (covered.billed_cost_usd, covered.list_cost_usd) == (55.04, 55.04)
    # The identity is CUR's own line item id and interval.
    assert len({e.source for e in imp.sent}) == 7
    assert r.totals[("aws", "adjustment")] == [1, -55.04, 0.0]
    assert r.totals[("aws", "purchase")][:2] == [1, 38.528]
    # Tax, credit and the negation are sent as charges: the negation cancels the covered line's
    # on-demand cost, which its effective cost never held, so it is 0 there (invoiced -55.04);
    # the savings plan's fee (a purchase), the m5 and the S3 lines are reported only.
    charges = sorted((e.charge_category, e.cost_usd, e.billed_cost_usd, e.tenant, e.gpu_model, e.gpu_count)
                     for e in imp.sent if e.charge_category != "usage")
    assert charges == [("adjustment", 0.0, -55.04, "serving", "H100-80GB", 0),
                       ("credit", -10.0, -10.0, "unassigned", "none", 0), ("tax", 5.5, 5.5, "unassigned", "none", 0)]
    assert r.credits_usd == -10.0 and (r.gpu_lines, r.charge_lines, r.other_lines) == (4, 3, 3)


async def test_gcp_export_as_json_lines_and_as_csv():
    imp = await run(DATA / "gcp_billing.jsonl", DATA / "gcp_billing.csv")
    assert imp.report.files == {"gcp_billing.jsonl": "gcp", "gcp_billing.csv": "gcp"}
    assert imp.report.rows_rejected == 0
    got = sorted((e.tenant, e.service, e.instance_type, e.gpu_model, e.gpu_count, e.pricing,
                  round(e.cost_usd, 6), e.region) for e in usage_sent(imp))
    assert got == [
        ("research", "finetune", "a2-highgpu-1g", "A100-40GB", 1, "on_demand", 2.9339, "us-central1"),
        ("research", "trainer", "a3-highgpu-8g", "H100-80GB", 8, "on_demand", 10.4, "us-east4"),
        ("research", "trainer", "a3-highgpu-8g", "H100-80GB", 8, "reserved", 63.7, "us-east4"),  # 88.2 - 24.5 CUD
        ("unassigned", "embedder", "g2-standard-4", "L4", 1, "spot", 0.224, "us-central1"),
    ]
    assert imp.report.credits_usd == pytest.approx(-24.55)
    assert imp.report.totals[("gcp", "tax")][:2] == [1, 3.1]
    assert [(e.charge_category, e.cost_usd, e.region) for e in imp.sent if e.charge_category != "usage"] \
        == [("tax", 3.1, "global")]
    # Both lines of the same instance and hour (GPU SKU and cores) are kept: distinct identities.
    a3 = [e for e in imp.sent if e.instance_type == "a3-highgpu-8g"]
    assert a3[0].kafka_key == a3[1].kafka_key and a3[0].source != a3[1].source


async def test_azure_cost_details_by_vm_size_with_ea_style_tags():
    imp = await run(DATA / "azure_cost_details.csv")
    assert imp.report.rows_rejected == 0
    got = sorted((e.tenant, e.service, e.instance_type, e.gpu_model, e.gpu_count, e.pricing, e.cost_usd,
                  e.region, e.period_end - e.period_start) for e in usage_sent(imp))
    assert got == [
        ("research", "trainer", "Standard_ND96isr_H100_v5", "H100-80GB", 8, "on_demand", 2359.68, "eastus", 86400),
        ("serving", "batch-embed", "Standard_ND96amsr_A100_v4", "A100-80GB", 8, "spot", 157.32, "eastus2", 86400),
    ]
    assert imp.report.totals[("azure", "purchase")][:2] == [1, 1200.0]
    assert next(e for e in imp.sent if e.pricing == "spot").list_cost_usd == pytest.approx(32.77 * 12)


def write_focus(path: Path, rows: list[dict]) -> Path:
    base = focus_rows()[0]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(base))
        w.writeheader()
        for changes in rows:
            w.writerow({**base, **changes})
    return path


async def test_a_malformed_row_is_reported_with_line_and_column_and_the_rest_imports(tmp_path):
    path = write_focus(tmp_path / "bad.csv", [{}, {"BilledCost": "twelve"}, {"ChargePeriodStart": "yesterday"},
                                              {"ChargeCategory": "Bribe"}, {"Tags": "{not json"}, {}])
    imp = await run(path)
    assert imp.report.rows == 6 and imp.report.rows_rejected == 4
    assert [(e["line"], e["column"]) for e in imp.report.errors] == [
        (3, "BilledCost"), (4, "ChargePeriodStart"), (5, "ChargeCategory"), (6, "Tags")]
    assert "'twelve' is not a number" in imp.report.errors[0]["message"]
    assert all(e["file"] == "bad.csv" for e in imp.report.errors)
    assert sum(t[0] for t in imp.report.totals.values()) == 2


async def test_a_non_usd_file_is_refused_unless_a_rate_is_given(tmp_path):
    path = write_focus(tmp_path / "eur.csv", [{"BillingCurrency": "EUR", "BilledCost": "10"}])
    with pytest.raises(ImportRefused, match="costs are in EUR, not USD; give the rate"):
        await run(path)
    imp = await run(path, usd_rate=1.1)
    assert imp.report.totals[("aws", "usage")][1] == pytest.approx(11.0)


@pytest.mark.parametrize("content, message", [
    ("a,b,c\n1,2,3\n", "not a FOCUS, AWS CUR 2.0, GCP or Azure export"),
    ("", "empty file"),
])
async def test_a_file_that_is_no_export_is_refused_by_name(tmp_path, content, message):
    path = tmp_path / "mystery.csv"
    path.write_text(content)
    with pytest.raises(ImportRefused, match=message) as err:
        await run(path)
    assert "mystery.csv" in str(err.value)


async def test_a_forced_format_names_the_missing_columns(tmp_path):
    with pytest.raises(ImportRefused, match="missing column.*line_item_unblended_cost"):
        await run(FOCUS_SAMPLE, fmt="aws-cur2")


async def test_a_corrupt_gzip_is_refused_with_its_name(tmp_path):
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(gzip.compress(FOCUS_SAMPLE.read_bytes())[:100])
    with pytest.raises(ImportRefused, match="broken.csv.gz"):
        await run(path)


async def test_a_streamed_import_reports_progress_as_it_reads(tmp_path):
    seen = []
    imp = Importer(MAPPING, on_progress=lambda src: seen.append((src.rows_read, round(src.fraction_done(), 3))))
    await imp.import_file(FOCUS_SAMPLE)
    assert seen[-1] == (1000, 1.0)
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)


def test_file_column_errors_read_like_a_person_wrote_them():
    from ingest.billing.lines import RowError, timestamp

    with pytest.raises(RowError) as err:
        timestamp({"Date": "31/12/2024"}, "Date")
    assert str(err.value) == "column Date: '31/12/2024' is not a date-time (ISO 8601 or MM/DD/YYYY)"
    assert timestamp({"t": "2024-09-18 22:00:00"}, "t") == timestamp({"t": "2024-09-18T22:00:00Z"}, "t") == \
        timestamp({"t": "2024-09-18 22:00:00 UTC"}, "t") == 1726696800.0
    assert timestamp({"d": "09/18/2024"}, "d") == 1726617600.0


async def test_a_cur2_parquet_export_with_a_map_of_tags_imports_like_its_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(DATA / "aws_cur2.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {c: [r[c] or None for r in rows] for c in rows[0] if c != "resource_tags"}
    table = pa.table(columns)
    for c in ("line_item_unblended_cost", "pricing_public_on_demand_cost", "savings_plan_savings_plan_effective_cost"):
        table = table.set_column(table.schema.get_field_index(c), c, table[c].cast(pa.float64()))
    for c in ("line_item_usage_start_date", "line_item_usage_end_date"):
        parsed = pa.array([None if v is None else v.replace("Z", "") for v in columns[c]]).cast(pa.timestamp("s"))
        table = table.set_column(table.schema.get_field_index(c), c, parsed)
    tags = pa.array([list(json.loads(r["resource_tags"]).items()) if r["resource_tags"] else None for r in rows],
                    type=pa.map_(pa.string(), pa.string()))
    pq.write_table(table.append_column("resource_tags", tags), tmp_path / "cur.parquet")
    from_csv, from_parquet = await run(DATA / "aws_cur2.csv"), await run(tmp_path / "cur.parquet")
    assert from_parquet.report.rows_rejected == 0 and from_parquet.report.files["cur.parquet"] == "aws-cur2"
    assert [(e.source, e.tenant, e.service, e.cost_usd, e.period_start) for e in from_parquet.sent] == \
        [(e.source, e.tenant, e.service, e.cost_usd, e.period_start) for e in from_csv.sent]


async def test_credit_and_tax_lines_are_sent_as_charges_with_their_tenant_and_resent_under_the_same_identity(tmp_path):
    from ingest.billing.synthetic import COLUMNS

    day = "2024-09-18T00:00:00Z"
    common = {"BillingAccountId": "payer-1", "ProviderName": "AWS", "BillingCurrency": "USD", "RegionId": "us-east-1",
              "ChargePeriodStart": day, "ChargePeriodEnd": "2024-09-19T00:00:00Z"}
    rows = [
        {"SubAccountId": "acct-1", "ChargeCategory": "Usage", "ChargePeriodEnd": "2024-09-18T01:00:00Z",
         "ResourceId": "i-1", "PricingCategory": "Standard", "BilledCost": "98.32", "EffectiveCost": "98.32",
         "ListCost": "98.32", "SkuPriceDetails": json.dumps({"InstanceType": "p5.48xlarge", "GpuCount": 8}),
         "Tags": json.dumps({"team": "serving", "service": "chat"})},
        # Account-wide: no tags, so the mapping's account rule names the tenant, else the default.
        {"SubAccountId": "research-training-4821", "ChargeCategory": "Credit", "BilledCost": "-25",
         "EffectiveCost": "-25", "ChargeDescription": "Promotional credit"},
        {"SubAccountId": "acct-2", "ChargeCategory": "Tax", "BilledCost": "4.2", "EffectiveCost": "4.2",
         "RegionId": ""},
        {"SubAccountId": "acct-1", "ChargeCategory": "Purchase", "BilledCost": "30", "EffectiveCost": "0",
         "ChargeDescription": "Compute savings plan, hourly commitment"},  # spread into EffectiveCost already
        {"SubAccountId": "acct-1", "ChargeCategory": "Usage", "ResourceId": "i-2", "BilledCost": "0.096",
         "EffectiveCost": "0.096", "SkuPriceDetails": json.dumps({"InstanceType": "m5.large"})},  # no GPU
    ]
    path = tmp_path / "focus.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows({c: "" for c in COLUMNS} | common | r for r in rows)

    first, again = await run(path), await run(path)
    got = [(e.charge_category, e.tenant, e.service, e.cost_usd, e.billed_cost_usd, e.gpu_model, e.gpu_count,
            e.instance_type, e.instance_id, e.region, e.period_end - e.period_start) for e in first.sent]
    assert got == [
        ("usage", "serving", "chat", 98.32, 98.32, "H100-80GB", 8, "p5.48xlarge", "i-1", "us-east-1", 3600),
        ("credit", "research", "unassigned", -25.0, -25.0, "none", 0, "none", "research-training-4821/credit",
         "us-east-1", 86400),
        ("tax", "unassigned", "unassigned", 4.2, 4.2, "none", 0, "none", "acct-2/tax", "global", 86400),
    ]
    r = first.report
    assert (r.rows, r.gpu_lines, r.charge_lines, r.events_sent, r.other_lines, r.rows_rejected) == (5, 1, 2, 3, 2, 0)
    assert r.credits_usd == -25.0 and r.not_metered[("aws", "acct-1", "purchase")] == [1, 30.0]
    # Re-imported: the same events under the same Kafka keys and sources (so the same rows).
    assert [(e.kafka_key, e.source, e.cost_usd) for e in again.sent] == \
        [(e.kafka_key, e.source, e.cost_usd) for e in first.sent]
    assert len({e.source for e in first.sent}) == 3
    # What the worker forwards and the API stores: the category travels in the JSON.
    from contracts.events import decode_billing, encode_batch
    decoded, rejects = decode_billing(encode_batch(first.sent))
    assert rejects == [] and [e.charge_category for e in decoded] == ["usage", "credit", "tax"]
