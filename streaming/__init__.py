"""streaming: the stream worker (`gpucost worker`), a Faust app.

In: `gpu.usage` and `gpu.billing` (raw JSON, one event or a batch per message) and alert rules on
`cost.rules`. Out: per-pane state on `cost.panes` (compacted; stage 1, exactly-once under replay),
coalesced hopping-window aggregates on `cost.aggregates` (the window stage), alerts on `cost.alerts`
(with their budget state on `cost.alertstate`), validated billing line items on `cost.billed`, and
bad or late events on `gpu.deadletter` with the reason. `panes.py` is the exact aggregation and
`alerts.py` the rule evaluation (both pure Python, unit-tested); `app.py` wires them to Kafka."""
