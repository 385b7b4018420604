"""The explorer's HTTP server: one static page and a small JSON API, standard library only.

Routes (nothing else exists; in particular no route reads a file named by the client):
    GET  /, /index.html, /app.js, /style.css   the packaged page, from a fixed allow-list read at start
    GET  /api/info                             model shape, limits, default text, explained variances
    POST /api/analyze                          JSON body -> attention pattern, curves, next tokens, ...
    POST /api/continue                         the same body -> greedy continuation (and the baseline's)

Bad requests get HTTP 400 (413 for a body over 64 KiB, 415 for a POST that is not `application/json`) and
`{"error": "<what is wrong and how to fix it>"}`. A request still waiting for the model when a newer one
arrives is answered 409 without a forward (the page has aborted it anyway).

Who may talk to it (the checks live in security.py):
- The server binds to 127.0.0.1 unless told otherwise. While bound to a loopback address it refuses
  requests whose Host header names another host (a DNS-rebinding page could otherwise drive it).
- Bound to any other address it needs an access token (made with `secrets`, or given), on every request:
  `?token=...` in the printed URL (a page load with it sets an HttpOnly, SameSite=Lax cookie and
  redirects to the bare URL), that cookie, or `Authorization: Bearer <token>`. Compared in constant time.
- A request whose Origin header is present and is not the server's own origin is refused (403), and a POST
  must be `application/json`: a page on another site can send neither without the browser asking first
  (a CORS preflight, which this server never grants), so no web page can drive the model.
- Sockets time out when idle (`request_timeout`), a whole request head (request line and headers) must
  arrive within `head_seconds` and a body within `body_seconds` however slowly it trickles, JSON may nest
  only `MAX_DEPTH` deep, and at most `max_connections` connections are served at once. When all are taken,
  a new connection takes the place of the one that has waited longest for its request head (slow or idle
  clients cannot lock out a real one); with none waiting, the new one is closed at once.
- A request with two Host or two Origin headers is a 400 (HTTP says so for Host; two Origins could split
  what the checks read from what a proxy read). A client that goes away mid-answer (the page aborts
  superseded requests) is not an error: nothing is printed.
"""

from __future__ import annotations

import io
import json
import math
import secrets
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from attnlab.explorer.engine import Explorer, Superseded
from attnlab.explorer.params import RequestError, parse_params
from attnlab.explorer.security import (  # noqa: F401  (re-exported: the checks moved to security.py)
    BODY_SECONDS,
    HEAD_SECONDS,
    MAX_BODY,
    MAX_CONNECTIONS,
    MAX_DEPTH,
    REQUEST_TIMEOUT,
    SECURITY_HEADERS,
    TOKEN_PATTERN,
    BoundedHTTPServer,
    DeadlineReader,
    check_token,
    is_loopback,
    json_depth,
    refusal,
)

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
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


class ExplorerServer(BoundedHTTPServer):
    """`token`: required on every request when given; None means one is generated for a non-loopback
    `host` and none is needed on loopback. `url` carries the token; `base_url` does not."""

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 8765,
                 token: str | None = None) -> None:
        self.explorer = explorer
        self.static = load_static()
        self.info_body = json.dumps(_clean(explorer.info())).encode()
        self._tickets = 0
        self._ticket_lock = threading.Lock()
        self.loopback = is_loopback(host)
        if token is None and not self.loopback:
            token = secrets.token_urlsafe(24)
        self.token = None if token is None else check_token(token)
        super().__init__((host, port), ExplorerHandler)
        self.cookie_name = f"attnlab_explorer_{self.server_address[1]}"  # cookies ignore ports: one each

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in str(host) else host}:{port}/"

    @property
    def url(self) -> str:
        """The URL to open: with `?token=...` when the server needs one."""
        return self.base_url if self.token is None else f"{self.base_url}?token={self.token}"

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

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # StreamRequestHandler sets it on the socket
        super().setup()
        self._reader = DeadlineReader(self.connection, self.server.request_timeout)
        self.rfile = io.BufferedReader(self._reader)

    def finish(self) -> None:
        self.server.waiting_for_head(self.connection, False)
        super().finish()

    def handle_one_request(self) -> None:
        # The whole head, from the wait for its first byte to the blank line, shares one deadline.
        self._reader.deadline = time.monotonic() + self.server.head_seconds
        self.server.waiting_for_head(self.connection, True)
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.waiting_for_head(self.connection, False)
        self._reader.deadline = time.monotonic() + self.server.body_seconds
        return ok

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.connection.settimeout(self.server.request_timeout)  # reads may have left a shorter one
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(_clean(obj)).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _allowed(self) -> bool:
        refused = refusal(self.headers, self.path, self.server)
        if refused is None:
            return True
        status, message, close = refused
        if close:
            self.close_connection = True
        self._error(status, message)
        return False

    def do_GET(self) -> None:  # noqa: N802
        if not self._allowed():
            return
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if self.server.token is not None and path in self.server.static and "token" in parse_qs(
                urlsplit(self.path).query):
            # The page load from the printed URL: keep the token in a cookie the page's own requests carry,
            # and drop it from the address bar. HttpOnly: no script reads it. Lax, not Strict: Strict would
            # drop it on this very redirect when the URL was clicked on another site; Lax still keeps it off
            # every cross-site request but a top-level GET, and GETs change nothing here.
            cookie = f"{self.server.cookie_name}={self.server.token}; Path=/; HttpOnly; SameSite=Lax"
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": path, "Set-Cookie": cookie})
        elif path == "/api/info":
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

    def _read_body(self, length: int) -> bytes | None:
        """The body, or None (answered, connection closed) if it stalls past body_seconds or ends early."""
        chunks, got = [], 0
        while got < length:
            try:
                chunk = self.rfile.read1(length - got)  # one socket read, bounded by the body deadline
            except TimeoutError:
                self.close_connection = True
                self._error(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within "
                            f"{self.server.body_seconds:g} s; send it at once")
                return None
            if not chunk:
                self.close_connection = True
                self._error(HTTPStatus.BAD_REQUEST, f"the body ended after {got} of {length} bytes "
                            f"(Content-Length)")
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _too_deep(self) -> None:
        self._error(HTTPStatus.BAD_REQUEST, f"the JSON body nests deeper than {MAX_DEPTH} levels; a request "
                    f"is one object of fields (see /api/info)")

    def do_POST(self) -> None:  # noqa: N802
        if not self._allowed():
            return
        route = self.path.split("?", 1)[0]
        if route not in ("/api/analyze", "/api/continue"):
            self._error(HTTPStatus.NOT_FOUND, "POST only to /api/analyze or /api/continue")
            return
        ctype = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {ctype or 'missing'!r}: send the "
                        f"body as JSON with the header 'Content-Type: application/json'")
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
        raw = self._read_body(length)
        if raw is None:
            return
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._error(HTTPStatus.BAD_REQUEST,
                        f"the body is not valid UTF-8 JSON ({exc}); send a JSON object")
            return
        except RecursionError:  # nested past what the decoder recurses through
            self._too_deep()
            return
        if json_depth(obj) > MAX_DEPTH:
            self._too_deep()
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


def serve_in_thread(explorer: Explorer, host: str = "127.0.0.1", port: int = 0,
                    token: str | None = None) -> ExplorerServer:
    """Start a server on a background thread (port 0 = any free port); stop it with .shutdown()."""
    server = ExplorerServer(explorer, host, port, token)
    threading.Thread(target=server.serve_forever, name="attnlab-explorer", daemon=True).start()
    return server
