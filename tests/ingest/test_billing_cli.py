"""`gpucost import billing` as a user runs it: GPU lines onto the real broker's gpu.billing with
stable keys and sources (a second run sends the same ones), a report on stderr, exit 1 with file,
line and column for a malformed row, exit 2 for a file that is refused."""

from __future__ import annotations

import json
import re
from collections import Counter
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.kafka import ensure_topics
from core.settings import Settings
from tests.support import ROOT, read_topic

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parent.parent / "data" / "billing"


def gpucost(tmp_path, prefix, *args):
    env = {**os.environ, "GPUCOST_TOPIC_PREFIX": prefix, "GPUCOST_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([sys.executable, "-m", "gpucost.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


async def test_import_billing_sends_gpu_lines_with_the_same_identities_every_time(kafka_broker, tmp_path):
    prefix = f"t{os.urandom(5).hex()}."
    settings = Settings(topic_prefix=prefix)
    await ensure_topics(settings)
    files = [str(DATA / f) for f in ("aws_cur2.csv", "gcp_billing.jsonl", "azure_cost_details.csv")]
    first = gpucost(tmp_path, prefix, "import", "billing", *files)
    assert first.returncode == 0, first.stderr
    # 9 GPU lines, and 4 charges: CUR's tax, credit and savings-plan negation, GCP's tax.
    assert "19 rows" in first.stderr and "13 billing events sent" in first.stderr
    second = gpucost(tmp_path, prefix, "import", "billing", *files)
    assert second.returncode == 0, second.stderr
    records = await read_topic(settings, settings.billing_topic)
    assert len(records) == 26
    identities = [(r.key, json.loads(r.value)["source"]) for r in records]
    assert sorted(Counter(identities).values()) == [2] * 13  # each line twice, under the same key and source
    assert Counter(json.loads(r.value).get("charge_category", "usage") for r in records) == \
        {"usage": 18, "tax": 4, "credit": 2, "adjustment": 2}
    assert {json.loads(r.value)["cloud"] for r in records} == {"aws", "gcp", "azure"}


def test_a_malformed_row_exits_1_naming_file_line_and_column(tmp_path):
    lines = (DATA / "aws_cur2.csv").read_text().splitlines()
    fields = lines[2].split(",")
    fields[12] = "lots"  # line_item_unblended_cost
    bad = tmp_path / "cur-bad.csv"
    bad.write_text("\n".join([lines[0], lines[1], ",".join(fields), *lines[3:]]) + "\n")
    done = gpucost(tmp_path, "unused.", "import", "billing", str(bad), "--dry-run")
    assert done.returncode == 1
    assert "cur-bad.csv:3 column line_item_unblended_cost: 'lots' is not a number" in " ".join(done.stderr.split())
    # the row count, not a digit of the rows/s figure ("4,069 rows/s" holds "9 rows")
    assert re.search(r"(?<![\d,.])10 rows\b", done.stderr) and not re.search(r"(?<![\d,.])9 rows\b", done.stderr)


def test_a_refused_file_exits_2_with_the_reason(tmp_path):
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    done = gpucost(tmp_path, "unused.", "import", "billing", str(tmp_path / "notes.csv"), "--dry-run")
    assert done.returncode == 2 and "not a FOCUS, AWS CUR 2.0, GCP or Azure export" in done.stderr
