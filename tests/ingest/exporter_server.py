"""A real HTTP server (stdlib, its own thread) that serves recorded dcgm-exporter responses from
tests/data/dcgm, plus one path that answers 500, for the DCGM source's tests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "dcgm"
HOSTS = ("gpu-node-a", "gpu-node-b", "gpu-node-mig")


class ExporterServer:
    """`/<name>/metrics` serves `<name>.prom` (or `bodies[name]` when a test sets one);
    `/broken/metrics` answers 500 as a crashed exporter does."""

    def __init__(self):
        self.bodies: dict[str, str] = {h: (DATA / f"{h}.prom").read_text() for h in HOSTS}
        self.requests: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                name = self.path.strip("/").split("/")[0]
                server.requests[name] = server.requests.get(name, 0) + 1
                body = server.bodies.get(name)
                if name == "broken" or body is None:
                    payload = b"error gathering metrics: dcgm: no hostengine"
                    self.send_response(500 if name == "broken" else 404)
                else:
                    payload = body.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}/metrics"

    def __enter__(self) -> "ExporterServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
