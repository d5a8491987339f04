"""A small HTTP file server on 127.0.0.1 for tests of the real download code (teachers, detector
weights, released generators, datasets): nothing is faked below the socket, and nothing leaves
the machine."""
from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


class FileServer:
    """Serves `files` (path -> bytes) on an ephemeral port and logs the path of every request;
    `fail` (path -> how many more requests get HTTP 500) and `delay` (path -> seconds before
    answering) make it misbehave on purpose. Unknown paths get 404."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.requests: list[str] = []
        self.fail: dict[str, int] = {}
        self.delay: dict[str, float] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                time.sleep(server.delay.get(self.path, 0.0))
                if server.fail.get(self.path, 0) > 0:
                    server.fail[self.path] -= 1
                    self.send_error(500)
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        return self.requests.count(path)


@contextmanager
def serving(files: dict[str, bytes] | None = None) -> Iterator[FileServer]:
    """A started `FileServer`, shut down on exit."""
    server = FileServer(files)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
        server.thread.join(timeout=5)


def without_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only 127.0.0.1 is contacted, directly: no proxy variable may route the tests' requests."""
    for var in PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
