"""A web app's own server for the browser tests: the page, the SDK bundle, and /token.

It stands in for the customer's backend, which mints tokens for its users; the
page lives on this origin and talks to edges on theirs, as in production.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from switchboard.contract.tokens import mint_token
from tests.browser.sdk import SHIPPED_BUNDLE
from tests.conftest import SECRET

PAGE = Path(__file__).with_name("sdk_page.html")


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/":
            self._send(200, PAGE.read_bytes(), "text/html; charset=utf-8")
        elif url.path == "/switchboard.js":  # the bundle the edge ships
            self._send(200, SHIPPED_BUNDLE.read_bytes(), "text/javascript")
        elif url.path == "/token":
            query = parse_qs(url.query)
            ttl = float(query.get("ttl", ["3600"])[0])
            token = mint_token(SECRET, query.get("sub", ["page"])[0], ttl_s=ttl)
            self._send(200, f'{{"token": "{token}"}}'.encode(), "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def app_server() -> Iterator[str]:
    """Serve on a free port; yields the base URL (an origin the test edges allow)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
