"""ingest: everything that puts events into Kafka.

In: GPU telemetry (the fleet simulator, the NVML agent, NVIDIA dcgm-exporter endpoints scraped by
`dcgm.py`, HTTP `POST /events`) and cloud billing exports (`billing/`: FOCUS, AWS CUR 2.0, GCP,
Azure). Out: `UsageEvent`s on `gpu.usage` and `BillingEvent`s on `gpu.billing` (JSON, one event or a
batch per message; the contract is `contracts/events.py`). `mapping.py` turns exporter labels and
bill tags into tenants and services; `producer.py` is the one Kafka producer they all use."""
