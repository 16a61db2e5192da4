"""Billing import throughput and memory next to a plain CSV read, side by side in one run.

Writes a FOCUS CSV of N rows (a fleet's hourly lines: a share of GPU instances, the rest other
services, tags on some; streamed to disk), then measures (1) `csv.reader` reading every row, and
(2) `gpucost import billing FILE` as a subprocess (parse, classify, build a BillingEvent per GPU
line; `--kafka` also sends them to a fresh topic prefix on the local broker, else `--dry-run`),
with its peak RSS. Prints rows/s for both, the ratio, and the importer's peak RSS.

    python -m bench.billing_import --rows 1000000 [--kafka]
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()
ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["BilledCost", "BillingAccountId", "BillingCurrency", "ChargeCategory", "ChargeDescription",
           "ChargePeriodEnd", "ChargePeriodStart", "EffectiveCost", "ListCost", "PricingCategory", "ProviderName",
           "RegionId", "ResourceId", "ServiceName", "SkuId", "SubAccountId", "Tags"]
GPU = [("p5.48xlarge", 55.04), ("g5.12xlarge", 5.672), ("g6e.12xlarge", 10.49264), ("p4d.24xlarge", 21.957642)]
OTHER = [("m5.large", 0.096), ("c5.2xlarge", 0.34), ("t3.medium", 0.0416)]


def write_export(path: Path, rows: int, gpu_share: float = 0.3, seed: int = 3) -> None:
    rng = random.Random(seed)
    start = 1_725_148_800  # 2024-09-01
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for i in range(rows):
            hour = start + (i // 500) * 3600
            gpu = rng.random() < gpu_share
            instance, usd_h = rng.choice(GPU if gpu else OTHER)
            cost = round(usd_h * rng.uniform(0.6, 1.0), 6)
            team = rng.choice(("research", "serving", "platform"))
            w.writerow([cost, "999999999999", "USD", "Usage", f"${usd_h} per On Demand Linux {instance} Instance Hour",
                        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(hour + 3600)),
                        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(hour)), cost, usd_h,
                        rng.choice(("Standard", "Standard", "Committed", "Dynamic")), "AWS", "us-east-1",
                        f"i-{i % 5000:017x}", "Amazon Elastic Compute Cloud", "SKU" + instance, "111111111111",
                        f'{{"team": "{team}", "service": "svc-{i % 7}"}}'])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--kafka", action="store_true", help="send the GPU lines to the local broker (fresh topics)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "focus_bench.csv"
        with console.status(f"writing {args.rows:,} rows ..."):
            write_export(path, args.rows)
        size_mb = path.stat().st_size / 1e6

        t0 = time.perf_counter()
        with open(path, newline="") as f:
            n = sum(1 for _ in csv.reader(f)) - 1
        plain_s = time.perf_counter() - t0

        env = {**os.environ, "GPUCOST_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:8]}.", "GPUCOST_DATA_DIR": tmp}
        cmd = [sys.executable, "-m", "gpucost.cli", "import", "billing", str(path)] + ([] if args.kafka else ["--dry-run"])
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        import_s = time.perf_counter() - t0
        if done.returncode != 0:
            console.print(done.stderr[-3000:])
            raise SystemExit(done.returncode)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB

    table = Table("rows", "file MB", "csv.reader rows/s", "import rows/s (process, incl. start-up)", "ratio",
                  "import peak RSS MB", "mode")
    table.add_row(f"{n:,}", f"{size_mb:.0f}", f"{n / plain_s:,.0f}", f"{n / import_s:,.0f}",
                  f"{plain_s / import_s:.3f}", f"{peak_rss_mb:.0f}", "kafka" if args.kafka else "dry run")
    console.print(table)


if __name__ == "__main__":
    main()
