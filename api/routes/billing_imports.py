"""`POST /api/billing/imports`: upload cloud billing export files (multipart, admin only) and import
them as `gpu.billing` events, the same importer as `gpucost import billing` (ingest/billing/).

The upload is parsed off the event loop (the WebSocket fan-out keeps running), then its GPU lines
are sent through the API's one producer. A file that cannot be imported (not an export, a missing
column, a non-USD file without `usd_rate`, every row malformed) is a 422 naming the file, and the
line and column of the first bad rows; a file with some bad rows imports the rest and lists them.
Uploads are bounded by the API's request size limit: large exports go through the CLI, which streams."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile

from api.auth import Principal, admin_only
from api.routes.events import _producer
from ingest.billing.importer import FORMATS, ImportRefused, Importer
from ingest.mapping import MappingError, load_mapping

router = APIRouter(prefix="/api/billing", tags=["billing"])


def _run_import(paths: list[tuple[Path, str]], fmt: str, usd_rate: float | None, mapping) -> Importer:
    importer = Importer(mapping, producer=None, usd_rate=usd_rate)  # collects events; sent afterwards

    async def run():
        for path, name in paths:
            await importer.import_file(path, fmt, display_name=name)

    asyncio.run(run())
    return importer


@router.post("/imports", responses={403: {"description": "Not an admin key"},
                                    413: {"description": "Upload larger than the API's request limit"},
                                    422: {"description": "A file that cannot be imported, with file, line and column"},
                                    503: {"description": "Kafka unavailable; nothing was sent"}})
async def import_billing(request: Request, files: list[UploadFile] = File(..., description="Export files"),
                         format: str = Form("auto", description=f"auto, {', '.join(FORMATS)}"),
                         usd_rate: float | None = Form(None, gt=0, description="USD per unit of a non-USD file's currency"),
                         _: Principal = Depends(admin_only)) -> dict:
    if format != "auto" and format not in FORMATS:
        raise HTTPException(422, f"unknown format {format!r}: one of auto, {', '.join(FORMATS)}")
    settings = request.app.state.settings
    try:
        mapping = load_mapping(settings.mapping_file)
    except MappingError as exc:
        raise HTTPException(409, f"the server's mapping file is unusable: {exc}") from exc
    workdir = Path(tempfile.mkdtemp(prefix="gpucost-import-"))
    try:
        paths = []
        for i, upload in enumerate(files):
            name = "".join(ch for ch in os.path.basename(upload.filename or "") if ch >= " ")[:200] or f"upload-{i}.csv"
            path = workdir / f"{i}-{name}"  # keeps the name's extension: .csv.gz, .parquet, .jsonl
            with open(path, "wb") as out:
                await asyncio.to_thread(shutil.copyfileobj, upload.file, out)
            paths.append((path, name))
        try:
            importer = await asyncio.to_thread(_run_import, paths, format, usd_rate, mapping)
        except ImportRefused as exc:
            raise HTTPException(422, str(exc)) from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = importer.report.to_dict()
    if report["rows_rejected"] and report["rows_rejected"] == report["rows"]:
        raise HTTPException(422, {"message": f"every one of the {report['rows']} rows was rejected; nothing was sent",
                                  "errors": report["errors"]})
    if importer.sent:
        try:
            producer = await _producer(request.app)
            await producer.send_billing(importer.sent)
        except (OSError, KafkaError) as exc:
            raise HTTPException(503, f"Kafka is unavailable ({exc.__class__.__name__}); re-send the files "
                                     "later (imports are idempotent)", headers={"Retry-After": "5"}) from exc
    return report
