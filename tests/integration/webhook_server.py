"""A real local HTTP server for webhook tests: each path answers per its script, every request kept."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class WebhookServer:
    """`fail_first[path] = n`: the first n posts to `path` get 503, later ones 200 (absent: always 200);
    `always[path] = status`: every post to `path` gets that status."""

    fail_first: dict[str, int] = field(default_factory=dict)
    always: dict[str, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner._lock:
                    owner.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    seen = sum(1 for r in owner.received if r.path == self.path)
                failing = seen <= owner.fail_first.get(self.path, 0)
                self.send_response(owner.always.get(self.path, 503 if failing else 200))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_port}{path}"

    def posts(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def __enter__(self) -> WebhookServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
