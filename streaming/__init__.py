"""streaming: the stream worker (`gpucost worker`), one Faust app of named stages.

In: `gpu.usage`, `gpu.billing`, alert rules on `cost.rules`, price overrides on `cost.prices`.
Out: pane state on `cost.panes`, window aggregates on `cost.aggregates`, alerts on `cost.alerts`,
billing line items on `cost.billed`, bad or late events on `gpu.deadletter` with the reason.

One module per stage (each docstring says what it reads and writes):
- `meter.py`: the hot path, usage events to panes (`panes.py` is the exact aggregation, `prices.py`
  the pricing, `deadletter.py` where bad events go);
- `windows.py`: the window stage, panes to hopping-window aggregates;
- `alerts.py`: the alert stage's Kafka side; `alert_eval.py` and `alert_book.py` evaluate rules;
- `billing.py`: billing line items;
- `worker.py`: assembles them. Records are the models of `contracts/`."""
