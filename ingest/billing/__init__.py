"""Billing export importers: cloud bills in, `BillingEvent`s on `gpu.billing` out.

One module per export format (`focus`, `aws_cur`, `gcp`, `azure`), each turning a row into a
`BillLine` (lines.py); `readers` streams CSV, gzip CSV, Parquet and newline JSON rows; `importer`
decides which lines are GPU instances, sends those, and reports everything (importer.py's
docstring says how imports stay idempotent). Called by `gpucost import billing` and
`POST /api/billing/imports`."""
