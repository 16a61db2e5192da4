"""gpucost core: settings, the one place that opens Kafka and database connections,
the local broker manager, the pricing catalog and the `gpucost` command line.

The product's boxes live beside it: ingest/ (producers), streaming/ (the Faust worker),
api/ (FastAPI), web/ (dashboard assets) and optimizer/ (measured inference workloads)."""

__version__ = "0.1.0"
