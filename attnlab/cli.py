"""The `attnlab` command line: a thin shell over the Python API.

Each area owns its sub-commands in `attnlab/<area>/cli.py`, which exposes `register(subparsers)`; a
registered parser sets `func(args) -> int | None` as its default. User mistakes (AttnlabError, ValueError,
TypeError, FileNotFoundError) become one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Ordered as `attnlab --help` lists them.
_COMMAND_MODULES = (
    "attnlab.experiments.cli",  # compare, run
    "attnlab.diagnose.cli",  # report
    "attnlab.stream.cli",  # stream eval / generate
    "attnlab.train.cli",  # train
    "attnlab.data.cli",  # data fetch
    "attnlab.explorer.cli",  # explore
)


def build_parser() -> argparse.ArgumentParser:
    from attnlab import __version__

    parser = argparse.ArgumentParser(
        prog="attnlab",
        description="A laboratory for the attention mechanism: softmax variants, streaming attention, "
        "and pathology diagnostics on real models.",
    )
    parser.add_argument("--version", action="version", version=f"attnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module, not an absent area
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from attnlab.errors import AttnlabError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("attnlab: interrupted", file=sys.stderr)
        return 130
    except (AttnlabError, ValueError, TypeError, OSError) as exc:
        if isinstance(exc, AttnlabError) or not _is_internal(exc):
            print(f"attnlab: error: {exc}", file=sys.stderr)
            return 2
        raise
    return int(code or 0)


def _is_internal(exc: BaseException) -> bool:
    """True for errors raised deep inside torch/numpy: those are bugs, so keep their traceback."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    filename = last.tb_frame.f_code.co_filename
    return "attnlab" not in filename and not filename.startswith("<")


if __name__ == "__main__":
    sys.exit(main())
