"""ingest: everything that puts events into Kafka.

In: GPU telemetry (the fleet simulator, the NVML agent, HTTP `POST /events`) and cloud billing
exports. Out: `UsageEvent`s on `gpu.usage` and `BillingEvent`s on `gpu.billing` (JSON, one event or
a batch per message). `events.py` is the contract every other box reads; `producer.py` is the one
Kafka producer they all use."""
