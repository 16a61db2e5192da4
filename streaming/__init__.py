"""streaming: the Faust worker (`gpucost worker`).

In: `gpu.usage` and `gpu.billing` (raw JSON, one event or a batch per message). Out: coalesced
hopping-window aggregates on `cost.aggregates`, the worker's durable pane state on `cost.panes`
(compacted), and bad or late events on `gpu.deadletter` with the reason. `panes.py` holds the exact
aggregation (pure Python, unit-tested), `app.py` wires it to Kafka through Faust."""
