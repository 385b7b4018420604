"""`attnlab explore`: serve the explorer page for one model on a local port."""

from __future__ import annotations

import argparse
import sys

from attnlab.cli_flags import add_device_flags, load_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explore", help="a local web page with sliders: attention, per-layer curves, steering",
        description="Load a model once and serve a page where sliders swap the attention normalizer, "
        "temperature and window, pick a layer and head, and steer the residual stream along its "
        "principal directions. Bound to 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--model", default="smollm2-135m",
                   help="model name, Hugging Face hub id in the local cache ('gpt2', 'org/name') or folder "
                   "(default: %(default)s)")
    add_device_flags(p)
    p.add_argument("--port", type=int, default=8765, help="port (default: %(default)s; 0 = any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s; any other address exposes the model "
                   "to the network and needs an access token)")
    p.add_argument("--token", default=None,
                   help="access token every request must carry (16+ characters of A-Z a-z 0-9 . _ ~ -); "
                   "default: none on loopback, a random one otherwise, printed in the URL")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnlab.errors import ConfigError
    from attnlab.explorer.server import ExplorerServer, check_token, is_loopback

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    token = getattr(args, "token", None)
    if token is not None:
        try:
            check_token(token)
        except ValueError as exc:
            raise ConfigError(f"--token: {exc}") from None
    import attnlab
    from attnlab.advice import check_cpu_half
    from attnlab.explorer.engine import Explorer

    check_cpu_half(getattr(args, "device", None), getattr(args, "dtype", None))
    check_port_free(args.host, args.port)  # before the model loads: a busy port should cost no minutes
    print(f"attnlab explore: loading {args.model} ...", file=sys.stderr, flush=True)
    loaded = attnlab.load_model(args.model, **load_kwargs(args))
    seconds = getattr(loaded, "load_seconds", None) or 0.0  # a stand-in model (tests) has no timing
    print(f"attnlab explore: loaded in {seconds:.1f} s; preparing the page ...",
          file=sys.stderr, flush=True)
    explorer = Explorer(loaded, name=args.model, progress=True)
    try:
        server = ExplorerServer(explorer, args.host, args.port, token)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({exc.strerror}); "
                          f"pick another --port (0 = any free port)") from exc
    if not is_loopback(args.host):
        print(f"attnlab explore: WARNING: listening on {args.host}, reachable from other machines; every "
              f"request needs the access token in the URL below (keep it private), or use --host 127.0.0.1",
              file=sys.stderr, flush=True)
    print(f"attnlab explore: serving {args.model} at {server.url}  (Ctrl-C to stop)", flush=True)
    if not args.no_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def check_port_free(host: str, port: int) -> None:
    """Raise one line when nothing can listen on host:port now (port 0 always works)."""
    import socket

    from attnlab.errors import ConfigError

    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r} is not an address this machine has ({exc.strerror}); "
                          f"use 127.0.0.1 or one of this machine's addresses") from None
    with socket.socket(family, kind, proto) as probe:
        # As the server itself binds (HTTPServer sets SO_REUSEADDR): a port left in TIME_WAIT is free, one
        # that another program listens on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}): another program holds "
                              f"it; pick another --port (0 = any free port) or stop that program") from None
