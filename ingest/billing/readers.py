"""Row readers for billing export files, all streaming (a row at a time, constant memory): CSV and
gzip-compressed CSV through the csv module, Parquet through pyarrow in record batches, and
newline-delimited JSON (GCP's BigQuery export), plain or gzip. Each yields (line, row), where line
is the file's line number (CSV, JSON) or row number (Parquet) for error messages, and reports how
far it has read for a progress bar."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Literal text that FOCUS and other exports write for SQL NULL.
NULL_TEXTS = frozenset({"", "NULL", "null"})


class ReadError(ValueError):
    """A file that cannot be read as the format its name says; the message names the file."""


class RowSource:
    """Rows of one file. `columns` is known after the first row is read (CSV: after the header)."""

    def __init__(self, path: str | Path, display_name: str | None = None):
        self.path = Path(path)
        self.name = display_name or self.path.name
        self.total_bytes = os.path.getsize(self.path)
        self.columns: list[str] = []
        self._raw = None
        lower = self.name.lower()
        if lower.endswith(".parquet") or lower.endswith(".pq"):
            self.kind = "parquet"
        elif lower.endswith((".json", ".jsonl", ".ndjson", ".json.gz", ".jsonl.gz", ".ndjson.gz")):
            self.kind = "ndjson"
        else:
            self.kind = "csv"
        self.gzip = lower.endswith(".gz")
        self.rows_read = 0
        self.total_rows: int | None = None  # Parquet: from the footer

    def fraction_done(self) -> float:
        if self.total_rows:
            return self.rows_read / self.total_rows
        return self.bytes_read / self.total_bytes if self.total_bytes else 1.0

    @property
    def bytes_read(self) -> int:
        """Bytes of the file (compressed, where it is) consumed so far."""
        if self._raw is None or self._raw.closed:
            return self.total_bytes if self.rows_read else 0
        return self._raw.tell()

    def _text(self) -> io.TextIOBase:
        self._raw = open(self.path, "rb")
        stream = gzip.GzipFile(fileobj=self._raw) if self.gzip else self._raw
        return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            if self.kind == "parquet":
                yield from self._parquet()
            elif self.kind == "ndjson":
                yield from self._ndjson()
            else:
                yield from self._csv()
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
            raise ReadError(f"{self.name}: cannot be read as {'gzip ' if self.gzip else ''}{self.kind} "
                            f"(after line {self.rows_read + 1}): {exc}") from exc
        finally:
            if self._raw is not None:
                self._raw.close()

    def _csv(self):
        with self._text() as text:
            reader = csv.reader(text)
            try:
                header = next(reader)
            except StopIteration:
                raise ReadError(f"{self.name}: empty file (no header line)") from None
            self.columns = [h.strip() for h in header]
            width = len(self.columns)
            for fields in reader:
                self.rows_read += 1
                if not fields:
                    continue
                if len(fields) != width:
                    yield reader.line_num, {"__error__": f"{len(fields)} fields where the header has {width}"}
                    continue
                yield reader.line_num, {c: (None if v in NULL_TEXTS else v) for c, v in zip(self.columns, fields)}

    def _ndjson(self):
        with self._text() as text:
            for line_no, line in enumerate(text, start=1):
                if not line.strip():
                    continue
                self.rows_read += 1
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    yield line_no, {"__error__": f"not JSON: {exc}"}
                    continue
                if not isinstance(row, dict):
                    yield line_no, {"__error__": "not a JSON object"}
                    continue
                if not self.columns:
                    self.columns = list(row)
                yield line_no, row

    def _parquet(self):
        import pyarrow.parquet as pq

        self._raw = open(self.path, "rb")
        try:
            parquet = pq.ParquetFile(self._raw)
        except Exception as exc:  # pyarrow raises ArrowInvalid (a ValueError) and others
            raise ReadError(f"{self.name}: not a Parquet file: {exc}") from exc
        self.columns = list(parquet.schema_arrow.names)
        self.total_rows = parquet.metadata.num_rows
        row_no = 0
        for batch in parquet.iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                row_no += 1
                self.rows_read += 1
                yield row_no, {k: (None if isinstance(v, str) and v in NULL_TEXTS else v) for k, v in row.items()}
