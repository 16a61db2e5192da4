"""Measured runs for the recommender: the optimizer's benchmark runs (table `benchmark_runs`, when
core.tables.benchmarks exists) and JSON result files under optimizer/data/ (lists of RunMetrics dicts,
or objects with a "runs" list). Unreadable entries are skipped and counted, never guessed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from optimizer.recommend import Measurement

DATA_DIR = Path(__file__).parent / "data"


@dataclass
class LoadedMeasurements:
    measurements: list[Measurement] = field(default_factory=list)
    skipped: int = 0
    sources: list[str] = field(default_factory=list)


def _runs_in(obj) -> list:
    """Run dicts in a results file: a list, {"runs": [...]}, or the GPU matrix's
    {"sections": {name: {"rows": [...]}}} (bench/optimizer_gpu.py)."""
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        if isinstance(obj.get("sections"), dict):
            runs = []
            for section in obj["sections"].values():
                if isinstance(section, dict):
                    runs += [r for r in section.get("rows", []) if isinstance(r, dict)]
            return runs
        for key in ("runs", "results", "measurements"):
            if isinstance(obj.get(key), list):
                return obj[key]
        return [obj]
    return []


def _add(out: LoadedMeasurements, run: dict, where: str) -> None:
    try:
        if (run.get("gpu_model", "cpu") == "cpu" or float(run.get("tokens_per_s", 0)) <= 0
                or run.get("accepted") is False):  # rejected by the optimizer's accuracy gate
            out.skipped += 1
            return
        m = Measurement.from_run(run)
        out.measurements.append(m)
    except (KeyError, TypeError, ValueError):
        out.skipped += 1
        return
    if where not in out.sources:
        out.sources.append(where)


def load_measurements(data_dir: Path | None = DATA_DIR, session=None) -> LoadedMeasurements:
    out = LoadedMeasurements()
    if data_dir is not None and Path(data_dir).is_dir():
        for path in sorted(Path(data_dir).glob("*.json")):
            try:
                runs = _runs_in(json.loads(path.read_text()))
            except (OSError, ValueError):
                out.skipped += 1
                continue
            for run in runs:
                if isinstance(run, dict):
                    _add(out, run, str(path.name))
    if session is not None:
        from sqlalchemy import select

        from core.tables.benchmarks import BenchmarkRun as table

        try:
            rows = session.scalars(select(table)).all()
        except Exception:  # noqa: BLE001 - table not created yet
            return out
        for row in rows:
            record = {c.name: getattr(row, c.name) for c in row.__table__.columns}
            for blob in ("metrics", "data", "result"):
                if isinstance(record.get(blob), dict):
                    record = {**record.pop(blob), **record}
            _add(out, record, "benchmark_runs")
    return out
