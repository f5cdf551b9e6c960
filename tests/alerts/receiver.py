"""A real HTTP receiver for webhook tests: records every POST, can refuse the first few."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fixtures import wait_for


class Receiver:
    """``ThreadingHTTPServer`` on 127.0.0.1; ``fail_first`` POSTs are answered ``fail_status``."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503) -> None:
        self.posts: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.fail_status = fail_status
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with receiver._lock:
                    refuse = receiver.fail_first > 0
                    if refuse:
                        receiver.fail_first -= 1
                    receiver.posts.append({
                        "path": self.path, "headers": dict(self.headers), "at": time.time(),
                        "body": json.loads(raw), "refused": refuse,
                    })
                self.send_response(receiver.fail_status if refuse else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self, path: str | None = None) -> list[dict[str, Any]]:
        """Bodies of the POSTs answered 200, oldest first."""
        with self._lock:
            return [p["body"] for p in self.posts
                    if not p["refused"] and (path is None or p["path"] == path)]

    def wait(self, predicate: Any, timeout: float, message: str) -> Any:
        return wait_for(lambda: predicate(self), timeout, 0.05, message)


def of(bodies: list[dict[str, Any]], status: str, subject: str | None = None) -> list[dict]:
    """The JSON notifications with this status (and subject)."""
    return [b for b in bodies if b.get("status") == status
            and (subject is None or b.get("subject") == subject)]
