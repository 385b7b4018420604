"""The explorer server's security checks, apart from its routes: who may talk to it and how much they may
ask (see server.py's docstring for the policy).

- `refusal(headers, path, server)`: one Host / Origin header each, a loopback-bound server only under its own
  Host names, no foreign Origin, and the access token when the server has one; the answer to send, or None.
- `BoundedHTTPServer`: at most `max_connections` at once; the one waiting longest for its request head gives
  way to a new connection.
- `DeadlineReader`: every socket read bounded by an idle timeout and the request's deadline.
- `json_depth`, `MAX_BODY`, `MAX_DEPTH`: limits on what a body may be.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import math
import re
import socket
import sys
import threading
import time
from email.message import Message
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

MAX_BODY = 64 * 1024
MAX_DEPTH = 16  # a request is an object holding a list of numbers at most: depth 2
REQUEST_TIMEOUT = 15.0  # seconds a socket may sit idle mid-request
HEAD_SECONDS = 10.0  # seconds the whole request head (line and headers) may take, idle keep-alive included
BODY_SECONDS = 30.0  # seconds the whole body may take
MAX_CONNECTIONS = 32
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~-]{16,256}")  # safe in a URL, a cookie and a header as is
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_token(token: str) -> str:
    """`token` if it is usable as an access token, else ValueError saying what a token must be."""
    if not TOKEN_PATTERN.fullmatch(token):
        raise ValueError("an access token must be 16 to 256 characters from A-Z a-z 0-9 . _ ~ -; "
                         "leave it out to have one generated")
    return token


class Guarded(Protocol):
    """What `refusal` reads of the server."""

    loopback: bool
    token: str | None
    cookie_name: str

    @property
    def base_url(self) -> str: ...

    def allowed_hosts(self) -> set[str]: ...


Refusal = tuple[int, str, bool]  # (HTTP status, message, close the connection)


def refusal(headers: Message, path: str, server: Guarded) -> Refusal | None:
    """Why this request may not be served, or None; checked in this order: single headers, Host, Origin,
    token. Messages name base_url, never url: the answer may go to a foreign page, and url carries the
    token."""
    for name in ("Host", "Origin"):
        count = len(headers.get_all(name) or [])
        if count > 1:
            return HTTPStatus.BAD_REQUEST, f"the request has {count} {name} headers; send one", True
    host = (headers.get("Host") or "").lower()
    if server.loopback and host not in server.allowed_hosts():
        return HTTPStatus.FORBIDDEN, f"unexpected Host header {host!r}; open {server.base_url} instead", False
    origin = headers.get("Origin")
    # No Origin (a same-origin GET, curl), or exactly this server's own, as the Host names it.
    if origin is not None and origin.strip().lower() != "http://" + host:
        return (HTTPStatus.FORBIDDEN, f"requests from origin {origin[:100]!r} are refused: only this "
                f"server's own page may call it; open {server.base_url} instead", False)
    if server.token is not None and not _token_presented(headers, path, server.token, server.cookie_name):
        return (HTTPStatus.UNAUTHORIZED, "this server needs its access token: open the URL it printed "
                "(ending in ?token=...), or send the header 'Authorization: Bearer <token>'", False)
    return None


def _token_presented(headers: Message, path: str, token: str, cookie_name: str) -> bool:
    found = []
    auth = headers.get("Authorization") or ""
    if auth[:7].lower() == "bearer ":
        found.append(auth[7:].strip())
    for part in (headers.get("Cookie") or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == cookie_name:
            found.append(value.strip())
    found += parse_qs(urlsplit(path).query).get("token", [])
    want = token.encode()
    # Bytes, not str: compare_digest refuses non-ASCII str, and a client may send anything.
    return any(hmac.compare_digest(t.encode("utf-8", "surrogateescape"), want) for t in found)


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most `max_connections` connections at once and lets
    `request_timeout`, `head_seconds` and `body_seconds` bound each (its handler applies them)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any) -> None:
        self.request_timeout, self.body_seconds = REQUEST_TIMEOUT, BODY_SECONDS
        self.head_seconds = HEAD_SECONDS
        self.max_connections = MAX_CONNECTIONS
        self._open = 0
        self._waiting: dict[socket.socket, float] = {}  # connections waiting for a request head: since when
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        # One thread per connection, at most max_connections of them: beyond that, the connection waiting
        # longest for its request head gives way (its blocked read ends; its thread exits in a moment), or,
        # with none waiting, the new one is closed at once.
        victim = None
        with self._open_lock:
            full = self._open >= self.max_connections
            if full and self._waiting:
                victim = min(self._waiting, key=self._waiting.__getitem__)
                del self._waiting[victim]
                full = False
            if not full:
                self._open += 1
        if victim is not None:
            try:
                victim.shutdown(socket.SHUT_RDWR)
            except OSError:  # already gone
                pass
        if full:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._open_lock:
            self._open -= 1

    def waiting_for_head(self, sock: socket.socket, waiting: bool) -> None:
        """Mark a connection as waiting for a request head (evictable when all places are taken), or not."""
        with self._open_lock:
            if waiting:
                self._waiting.setdefault(sock, time.monotonic())
            else:
                self._waiting.pop(sock, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return  # the client went away or stalled past its deadline: nothing to report
        super().handle_error(request, client_address)


class DeadlineReader(io.RawIOBase):
    """A connection's socket reads, each waiting at most `idle` seconds and never past `deadline`
    (time.monotonic()): a client trickling a byte every few seconds cannot hold a request open."""

    def __init__(self, sock: socket.socket, idle: float) -> None:
        super().__init__()
        self.sock, self.idle, self.deadline = sock, idle, math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request's deadline passed")
        self.sock.settimeout(min(self.idle, left))
        return self.sock.recv_into(buffer)


def json_depth(obj: Any) -> int:
    """How deep lists and objects nest in decoded JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:  # no need to look further down
                stack.extend((x, depth + 1) for x in (item.values() if isinstance(item, dict) else item))
    return deepest


__all__ = ["BODY_SECONDS", "HEAD_SECONDS", "MAX_BODY", "MAX_CONNECTIONS", "MAX_DEPTH", "REQUEST_TIMEOUT",
           "SECURITY_HEADERS", "TOKEN_PATTERN", "BoundedHTTPServer", "DeadlineReader", "check_token",
           "is_loopback", "json_depth", "refusal"]
