"""api: the FastAPI service (`gpucost api`).

In: `cost.aggregates` (and `cost.alerts`) from the stream worker, HTTP and WebSocket clients.
Out: live pushes over `/ws`, REST (history, rules, webhooks, pricing, recommendations), the
dashboard's static files, and rows persisted through SQLAlchemy. It never computes aggregates:
it stores, filters and forwards what the worker emitted."""
