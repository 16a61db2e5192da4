"""web: the browser dashboard (static files served by the API at `/`).

In: the API's `/ws` WebSocket (snapshot, then live aggregates and alerts) and REST history.
Out: charts of live spend rate by tenant and by service, utilization and idle waste, drawn with
Plotly.js served locally. Messages are buffered and drawn once per animation frame."""
