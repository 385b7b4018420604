"""The explorer's HTTP server: one static page and a small JSON API, standard library only.

Routes (nothing else exists; in particular no route reads a file named by the client):
    GET  /, /index.html, /app.js, /style.css   the packaged page, from a fixed allow-list read at start
    GET  /api/info                             model shape, limits, default text, explained variances
    POST /api/analyze                          JSON body -> attention pattern, curves, next tokens, ...
    POST /api/continue                         the same body -> greedy continuation (and the baseline's)

Bad requests get HTTP 400 (413 for a body over 64 KiB) and `{"error": "<what is wrong and how to fix
it>"}`. A request still waiting for the model when a newer one arrives is answered 409 without a
forward (the page has aborted it anyway). The server binds to 127.0.0.1 unless told otherwise; while it
is bound to a loopback address it also refuses requests whose Host header names another host (a
DNS-rebinding page could otherwise drive it from a browser).
"""

from __future__ import annotations

import ipaddress
import json
import math
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from attnlab.explorer.engine import Explorer, Superseded
from attnlab.explorer.params import RequestError, parse_params

MAX_BODY = 64 * 1024
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def load_static() -> dict[str, tuple[bytes, str]]:
    """The allow-listed page files, read once from the package."""
    folder = resources.files("attnlab.explorer") / "static"
    files = {name: (folder / name).read_bytes() for name, _ in set(STATIC.values())}
    return {route: (files[name], ctype) for route, (name, ctype) in STATIC.items()}


def _clean(obj: Any) -> Any:
    """JSON has no NaN or Infinity; send null instead, which the page draws as a gap."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


class ExplorerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 8765) -> None:
        self.explorer = explorer
        self.static = load_static()
        self.info_body = json.dumps(_clean(explorer.info())).encode()
        self._tickets = 0
        self._ticket_lock = threading.Lock()
        super().__init__((host, port), ExplorerHandler)
        try:
            self.loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            self.loopback = host == "localhost"

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in str(host) else host}:{port}/"

    def ticket(self) -> int:
        """Number model requests in arrival order, so a waiting one can tell it is no longer the newest."""
        with self._ticket_lock:
            self._tickets += 1
            return self._tickets

    def is_latest(self, ticket: int) -> bool:
        return ticket == self._tickets

    def allowed_hosts(self) -> set[str]:
        port = self.server_address[1]
        return {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}


class ExplorerHandler(BaseHTTPRequestHandler):
    server: ExplorerServer
    server_version = "attnlab-explorer"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # quiet: the CLI prints the URL; request logs would flood the terminal on every slider move

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in _SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(_clean(obj)).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        if not self.server.loopback:
            return True
        host = (self.headers.get("Host") or "").lower()
        if host in self.server.allowed_hosts():
            return True
        self._error(HTTPStatus.FORBIDDEN, f"unexpected Host header {host!r}; open {self.server.url} instead")
        return False

    def do_GET(self) -> None:  # noqa: N802
        if not self._host_ok():
            return
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path == "/api/info":
            self._send(HTTPStatus.OK, self.server.info_body, "application/json")
        elif path in self.server.static:
            body, ctype = self.server.static[path]
            self._send(HTTPStatus.OK, body, ctype)
        elif path.startswith("/api/"):
            post = path in ("/api/analyze", "/api/continue")
            self._error(HTTPStatus.METHOD_NOT_ALLOWED if post else HTTPStatus.NOT_FOUND,
                        f"use POST {path} with a JSON body" if post
                        else f"no API route {path!r}; routes: GET /api/info, "
                             f"POST /api/analyze, POST /api/continue")
        else:
            self._error(HTTPStatus.NOT_FOUND, "not found: this server serves only its own page "
                        "(/, /app.js, /style.css) and its /api/ routes")

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return
        route = self.path.split("?", 1)[0]
        if route not in ("/api/analyze", "/api/continue"):
            self._error(HTTPStatus.NOT_FOUND, "POST only to /api/analyze or /api/continue")
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length header with the JSON body")
            return
        if length < 0 or length > MAX_BODY:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"request body of {length} bytes; the limit is {MAX_BODY}: shorten the text")
            return
        raw = self.rfile.read(length)
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST,
                        f"the body is not valid UTF-8 JSON ({exc}); send a JSON object")
            return
        ex = self.server.explorer
        try:
            params = parse_params(obj, ex.limits, n_layers=ex.n_layers, n_heads=ex.n_heads,
                                  n_directions=ex.n_directions)
            ticket = self.server.ticket()

            def stale() -> bool:
                return not self.server.is_latest(ticket)

            run = ex.analyze if route == "/api/analyze" else ex.continue_text
            result = run(params, stale=stale)
        except RequestError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
            return
        except Superseded as exc:  # the page has already moved on and aborted this request
            self._error(HTTPStatus.CONFLICT, f"{exc}; nothing to do")
            return
        except Exception as exc:  # a model failure must answer the page, not hang it
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
            return
        self._json(HTTPStatus.OK, result)


def serve_in_thread(explorer: Explorer, host: str = "127.0.0.1", port: int = 0) -> ExplorerServer:
    """Start a server on a background thread (port 0 = any free port); stop it with .shutdown()."""
    server = ExplorerServer(explorer, host, port)
    threading.Thread(target=server.serve_forever, name="attnlab-explorer", daemon=True).start()
    return server
