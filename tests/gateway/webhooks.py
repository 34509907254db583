"""A local webhook receiver for the operator-alert tests: a threaded HTTP server on
loopback that keeps every POST (path, query, JSON body) and answers what it is told."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Receiver:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        # path -> how many of the next calls to answer 500
        self.failures: dict[str, int] = {}
        # path -> the JSON body of a 200 answer (default {})
        self.answers: dict[str, Any] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                parts = urlsplit(self.path)
                with receiver.lock:
                    failing = receiver.failures.get(parts.path, 0)
                    if failing:
                        receiver.failures[parts.path] = failing - 1
                    else:
                        receiver.calls.append({"path": parts.path,
                                               "query": parse_qs(parts.query),
                                               "body": json.loads(raw or b"null")})
                    answer = receiver.answers.get(parts.path, {})
                status = 500 if failing else 200
                data = json.dumps(answer if not failing else {"error": "down"}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [c["body"] for c in self.calls if c["path"] == path]

    def wait(self, path: str, count: int, timeout: float = 20.0) -> list[Any]:
        """Poll until ``path`` has received ``count`` calls; exactly that many, or fail."""
        wait_for(lambda: len(self.bodies(path)) >= count, timeout,
                 f"{count} webhook calls to {path}")
        got = self.bodies(path)
        assert len(got) == count, got
        return got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.05)
