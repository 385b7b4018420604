"""Who may talk to the explorer's server, and what a hostile client can make it do.

The server runs on a stub explorer (the model side is tests/test_explorer_api.py's business): these tests
are about HTTP. Every server binds port 0 and stops at the end of its test; raw-socket loops are bounded.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from attnlab.errors import ConfigError
from attnlab.explorer.params import Limits
from attnlab.explorer.server import ExplorerServer, check_token, serve_in_thread

BODY = json.dumps({"text": "To be, or not to be"}).encode()


class StubExplorer:
    """What the server reads of an Explorer; `calls` counts requests that reached the model side."""

    limits = Limits()
    n_layers, n_heads, n_directions = 2, 2, 4

    def __init__(self) -> None:
        self.calls = 0

    def info(self) -> dict[str, Any]:
        return {"model": "stub"}

    def analyze(self, params: Any, stale: Any = None) -> dict[str, Any]:
        self.calls += 1
        return {"text": params.text}

    continue_text = analyze


@pytest.fixture
def stub() -> StubExplorer:
    return StubExplorer()


@contextmanager
def _serve(stub: StubExplorer, host: str = "127.0.0.1", token: str | None = None) -> Iterator[ExplorerServer]:
    srv = serve_in_thread(stub, host, 0, token)  # type: ignore[arg-type]
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def local(stub: StubExplorer) -> Iterator[ExplorerServer]:
    with _serve(stub) as srv:
        yield srv


@pytest.fixture
def exposed(stub: StubExplorer) -> Iterator[ExplorerServer]:
    # Bound to every interface, as `--host 0.0.0.0`: reached here through 127.0.0.1 (so the loopback Host
    # check does not apply: the token must do the work).
    with _serve(stub, "0.0.0.0") as srv:
        yield srv


def request(srv: ExplorerServer, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    port = srv.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = {"Host": f"127.0.0.1:{port}"}
    if body is not None:
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in sent.items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    res = conn.getresponse()
    payload = res.read()
    conn.close()
    if res.getheader("Content-Type", "").startswith("application/json"):
        payload = json.loads(payload)
    return res.status, dict(res.getheaders()), payload


def test_loopback_bind_needs_no_token(local: ExplorerServer, stub: StubExplorer) -> None:
    assert local.token is None and local.url == local.base_url
    assert request(local, "GET", "/")[0] == 200
    assert request(local, "POST", "/api/analyze", BODY)[:1] == (200,) and stub.calls == 1


def test_non_loopback_bind_needs_the_token_on_every_request(exposed: ExplorerServer,
                                                            stub: StubExplorer) -> None:
    token = exposed.token
    assert token is not None and len(token) >= 32 and exposed.url == f"{exposed.base_url}?token={token}"
    wrong = ("A" if token[0] != "A" else "B") + token[1:]
    for headers in ({}, {"Authorization": f"Bearer {wrong}"}, {"Authorization": "Bearer \u00e9"},
                    {"Cookie": f"{exposed.cookie_name}={wrong}"}, {"Cookie": f"attnlab_explorer_1={token}"}):
        for method, path, body in (("GET", "/", None), ("GET", "/api/info", None), ("GET", "/app.js", None),
                                   ("POST", "/api/analyze", BODY), ("POST", "/api/continue", BODY)):
            status, _, payload = request(exposed, method, path, body, headers)
            assert status == 401, (method, path, headers)
            assert "needs its access token" in payload["error"] and token not in payload["error"]
    assert request(exposed, "GET", f"/api/info?token={wrong}")[0] == 401
    assert stub.calls == 0
    # The printed URL: the page load sets a cookie and sends the browser to the bare URL.
    status, headers, _ = request(exposed, "GET", f"/?token={token}")
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{exposed.cookie_name}={token};") and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    with_cookie = {"Cookie": f"other=1; {exposed.cookie_name}={token}"}
    assert request(exposed, "GET", "/app.js", headers=with_cookie)[0] == 200
    assert request(exposed, "POST", "/api/analyze", BODY, with_cookie)[0] == 200
    assert request(exposed, "GET", "/api/info", headers={"Authorization": f"Bearer {token}"})[0] == 200
    assert stub.calls == 1


def test_tokens_are_random_or_given_and_checked(stub: StubExplorer) -> None:
    servers = [ExplorerServer(stub, "0.0.0.0", 0) for _ in range(2)]  # type: ignore[arg-type]
    given = ExplorerServer(stub, "127.0.0.1", 0, token="correct-horse-battery")  # type: ignore[arg-type]
    try:
        assert servers[0].token != servers[1].token
        assert given.token == "correct-horse-battery" and given.url.endswith("?token=correct-horse-battery")
    finally:
        for srv in (*servers, given):
            srv.server_close()
    for bad in ("short", "has space in it ok?", "x" * 300, "tok\u00e9n-1234567890123"):
        with pytest.raises(ValueError, match="16 to 256 characters"):
            check_token(bad)


def test_a_given_token_is_required_on_loopback_too(stub: StubExplorer) -> None:
    with _serve(stub, token="correct-horse-battery") as srv:
        assert request(srv, "GET", "/api/info")[0] == 401
        bearer = {"Authorization": "Bearer correct-horse-battery"}
        assert request(srv, "GET", "/api/info", headers=bearer)[0] == 200


def test_cli_warns_and_prints_the_token_url_for_a_non_loopback_host(monkeypatch, capsys, stub) -> None:
    import argparse

    import attnlab
    from attnlab.explorer import cli, engine

    monkeypatch.setattr(attnlab, "load_model", lambda name, **kw: object())
    monkeypatch.setattr(engine, "Explorer", lambda loaded, name, **kw: stub)
    monkeypatch.setattr(ExplorerServer, "serve_forever", lambda self: None)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    assert cli.run(parser.parse_args(["explore", "--host", "0.0.0.0", "--port", "0", "--no-browser"])) == 0
    out, err = capsys.readouterr()
    assert "WARNING: listening on 0.0.0.0" in err and "?token=" in out
    args = ["explore", "--host", "0.0.0.0", "--port", "0", "--no-browser", "--token", "my-own-token-0123"]
    assert cli.run(parser.parse_args(args)) == 0
    assert "?token=my-own-token-0123" in capsys.readouterr().out
    monkeypatch.setattr(attnlab, "load_model", lambda name: pytest.fail("loaded before checking --token"))
    with pytest.raises(ConfigError, match="--token: an access token must be 16 to 256"):
        cli.run(parser.parse_args(["explore", "--host", "0.0.0.0", "--token", "short", "--no-browser"]))


def test_foreign_origins_and_non_json_posts_are_refused(local: ExplorerServer, stub: StubExplorer) -> None:
    port = local.server_address[1]
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}"):
        status, _, payload = request(local, "POST", "/api/analyze", BODY, {"Origin": origin})
        assert status == 403 and "only this server's own page" in payload["error"]
        assert request(local, "GET", "/api/info", headers={"Origin": origin})[0] == 403
    # What a cross-origin page can send without a preflight: a "simple" content type.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        status, _, payload = request(local, "POST", "/api/analyze", BODY, {"Content-Type": ctype})
        assert status == 415 and "Content-Type: application/json" in payload["error"]
    assert stub.calls == 0
    # The page's own requests (app.js): same origin, application/json.
    own = {"Origin": f"http://127.0.0.1:{port}", "Content-Type": "application/json; charset=utf-8"}
    assert request(local, "POST", "/api/analyze", BODY, own)[0] == 200 and stub.calls == 1
    assert request(local, "GET", "/api/info", headers={"Origin": f"http://localhost:{port}",
                                                        "Host": f"localhost:{port}"})[0] == 200


def test_deeply_nested_json_is_a_400(local: ExplorerServer, stub: StubExplorer) -> None:
    for body in (b"[" * 30000 + b"]" * 30000,  # past the decoder's recursion limit
                 b'{"text": "a", "alphas": ' + b"[" * 40 + b"]" * 40 + b"}"):
        status, _, payload = request(local, "POST", "/api/analyze", body)
        assert status == 400 and "nests deeper than" in payload["error"]
    assert request(local, "GET", "/api/info")[0] == 200 and stub.calls == 0


def _raw(srv: ExplorerServer, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def _post_head(srv: ExplorerServer, length: int) -> bytes:
    return (f"POST /api/analyze HTTP/1.1\r\nHost: 127.0.0.1:{srv.server_address[1]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the server closes (True) or `seconds` pass (False); returns what it sent."""
    got, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_stalled_requests_time_out(local: ExplorerServer) -> None:
    local.request_timeout, local.body_seconds = 0.5, 1.0
    silent = _raw(local)  # connects, sends nothing
    headers_only = _raw(local, _post_head(local, 100) + b'{"te')  # promises a body that never comes
    start = time.monotonic()
    for sock in (silent, headers_only):
        closed, _ = _closed_within(sock, 5.0)
        sock.close()
        assert closed
    assert time.monotonic() - start < 4.0
    # A body that trickles in (each byte within the idle timeout) is cut off by the body deadline.
    trickle = _raw(local, _post_head(local, 200))
    answer = b""
    for _ in range(40):  # at most 40 x 0.1 s
        try:
            trickle.sendall(b" ")
        except OSError:
            break
        closed, got = _closed_within(trickle, 0.1)
        answer += got
        if closed:
            break
    trickle.close()
    assert answer.startswith(b"HTTP/1.0 408"), answer[:100]


def test_connections_are_capped_and_freed(local: ExplorerServer) -> None:
    local.request_timeout, local.max_connections = 1.0, 4
    before = threading.active_count()
    socks = [_raw(local) for _ in range(12)]
    time.sleep(0.3)
    try:
        assert local._open <= 4
        assert threading.active_count() - before <= 4
        dropped = sum(_closed_within(s, 0.3)[0] for s in socks)
        assert dropped >= 8  # the ones past the cap were closed at once
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 5
    while local._open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert local._open == 0 and request(local, "GET", "/api/info")[0] == 200


def test_slow_clients_do_not_lock_out_a_real_request(local: ExplorerServer) -> None:
    # 40 clients (more than max_connections) each send a header byte every 2 s and never finish their head:
    # a real request made meanwhile is answered within 2 s. Bounded: the slow clients stop after 5 s.
    port = local.server_address[1]
    slow = [_raw(local, b"GET / HTTP/1.1\r\nHost: 127.0.0.1:" + str(port).encode()) for _ in range(40)]
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(2.0):
            for s in slow:
                try:
                    s.sendall(b"0")
                except OSError:  # this one gave way to a real request: fine
                    pass

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # every slow client is connected and holding a place
        for _ in range(3):
            start = time.monotonic()
            assert request(local, "GET", "/api/info")[0] == 200
            assert time.monotonic() - start < 2.0
            time.sleep(1.0)
    finally:
        stop.set()
        thread.join(5)
        for s in slow:
            s.close()


def test_a_request_head_has_one_deadline_however_it_trickles(local: ExplorerServer) -> None:
    local.request_timeout, local.head_seconds = 5.0, 1.0  # each byte well within the idle timeout
    sock = _raw(local, b"GET / HTTP/1.1\r\n")
    start, closed = time.monotonic(), False
    while not closed and time.monotonic() - start < 4.0:
        try:
            sock.sendall(b"X")
        except OSError:
            break
        closed = _closed_within(sock, 0.2)[0]
    sock.close()
    assert time.monotonic() - start < 2.5  # cut at the 1 s head deadline, not after 4 s of trickling


@pytest.mark.parametrize("name", ["Host", "Origin"])
def test_duplicate_host_or_origin_headers_are_a_400(local: ExplorerServer, stub: StubExplorer,
                                                    name: str) -> None:
    port = local.server_address[1]
    own = f"127.0.0.1:{port}" if name == "Host" else f"http://127.0.0.1:{port}"
    extra = f"Host: 127.0.0.1:{port}\r\n" if name == "Origin" else ""
    sock = _raw(local, (f"POST /api/analyze HTTP/1.1\r\n{extra}{name}: {own}\r\n{name}: {own}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode()
                + BODY)
    _, answer = _closed_within(sock, 3.0)
    sock.close()
    assert answer.startswith(b"HTTP/1.0 400"), answer[:100]
    assert f"the request has 2 {name} headers".encode() in answer and stub.calls == 0


def test_a_client_that_goes_away_prints_no_traceback(stub: StubExplorer, capfd) -> None:
    # The page aborts superseded requests by design: the answer then meets a reset connection.
    answered = threading.Event()

    def slow_analyze(params: Any, stale: Any = None) -> dict[str, Any]:
        time.sleep(0.3)  # the client is gone by now
        answered.set()
        return {"text": "x" * 100_000}

    stub.analyze = slow_analyze  # type: ignore[method-assign]
    with _serve(stub) as srv:
        sock = _raw(srv, _post_head(srv, len(BODY)) + BODY)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        time.sleep(0.1)
        sock.close()
        assert answered.wait(5)
        time.sleep(0.3)  # the write fails now
        assert request(srv, "GET", "/api/info")[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err


def test_refusal_is_a_function_of_the_request_alone() -> None:
    """security.refusal without a socket: each check refuses what it should and passes the rest."""
    from email.message import Message
    from types import SimpleNamespace

    from attnlab.explorer.security import refusal

    def headers(*pairs: tuple[str, str]) -> Message:
        m = Message()
        for k, v in pairs:
            m[k] = v
        return m

    local = SimpleNamespace(loopback=True, token=None, cookie_name="c", base_url="http://127.0.0.1:9/",
                            allowed_hosts=lambda: {"127.0.0.1:9", "localhost:9", "[::1]:9"})
    ok = headers(("Host", "127.0.0.1:9"))
    assert refusal(ok, "/", local) is None
    assert refusal(headers(("Host", "a"), ("Host", "b")), "/", local)[::2] == (400, True)
    assert refusal(headers(("Host", "evil.example:9")), "/", local)[0] == 403
    assert refusal(headers(("Host", "127.0.0.1:9"), ("Origin", "http://evil.example")), "/", local)[0] == 403
    assert refusal(headers(("Host", "127.0.0.1:9"), ("Origin", "http://127.0.0.1:9")), "/", local) is None
    token = "t" * 20
    remote = SimpleNamespace(**{**vars(local), "loopback": False, "token": token})
    assert refusal(headers(("Host", "any:9")), "/", remote)[0] == 401
    assert refusal(headers(("Host", "any:9")), f"/?token={token}", remote) is None
    assert refusal(headers(("Host", "any:9"), ("Authorization", f"Bearer {token}")), "/", remote) is None
    assert refusal(headers(("Host", "any:9"), ("Cookie", f"x=1; c={token}")), "/", remote) is None
    assert refusal(headers(("Host", "any:9"), ("Cookie", "c=" + "u" * 20)), "/", remote)[0] == 401
