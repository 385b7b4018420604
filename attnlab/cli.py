"""The `attnlab` command line: a thin shell over the Python API.

Each area owns its sub-commands in `attnlab/<area>/cli.py`, which exposes `register(subparsers)`; a
registered parser sets `func(args) -> int | None` as its default. User mistakes become one line on stderr
and exit status 2, never a traceback: every AttnlabError (attnlab converts a bad file, path or value into
one where it meets it, naming the file and the fix), and a ValueError, TypeError or OSError raised by
attnlab's own code or naming a file. The same errors raised inside torch, transformers or the standard
library are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

# Command -> (the module that registers it, the line `attnlab --help` shows). A module is imported only when
# its command runs (or its own --help is asked for): several pull torch in on import, which made a bare
# `attnlab --help` take seconds. tests/test_cli_habits.py checks each line against the module's own help.
# Ordered as `attnlab --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("attnlab.experiments.cli", "run one study and write results.json, PNG plots and index.html"),
    "compare": ("attnlab.experiments.cli",
                "the main job: does +1 in the softmax denominator help? from scratch, then retrofit"),
    "report": ("attnlab.diagnose.cli",
               "diagnose models: every pathology per layer and head, in one HTML report"),
    "stream": ("attnlab.stream.cli", "streaming inference: cache policies, perplexity, generation"),
    "train": ("attnlab.train.cli", "train attnlab's GPT on text (resumable; data-parallel under torchrun)"),
    "data": ("attnlab.data.cli", "fetch the Shakespeare corpus; inspect a text"),
    "explore": ("attnlab.explorer.cli",
                "a local web page with sliders: attention, per-layer curves, steering"),
}


class _LazySubParsers(argparse._SubParsersAction):
    """Sub-commands whose parsers are built when chosen: the module named in COMMANDS is imported and its
    `register(subparsers)` called then, so the top-level parser costs no imports."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._modules: dict[str, str] = {}  # command -> module, until loaded

    def add_lazy(self, name: str, module: str, help: str) -> None:  # noqa: A002 (argparse's own word)
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help))
        self._name_parser_map[name] = None  # a placeholder, so argparse accepts the choice
        self._modules[name] = module

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name in self._modules:  # its help line is listed already (add_lazy)
            kwargs.pop("help", None)
            del self._modules[name]
            del self._name_parser_map[name]  # the placeholder; argparse refuses a name registered twice
        return super().add_parser(name, **kwargs)

    def load(self, name: str) -> argparse.ArgumentParser | None:
        """The parser of command `name`, registering its module first if need be."""
        module_name = self._modules.get(name)
        if module_name is not None:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:  # a real missing dependency inside the module
                    raise
                raise SystemExit(f"attnlab: error: the command {name!r} is not installed ({module_name})")\
                    from None
            module.register(self)
            for other in [n for n, m in self._modules.items() if m == module_name]:
                del self._modules[other]  # a module that registers fewer commands than COMMANDS lists
        return self._name_parser_map.get(name)

    def load_all(self) -> None:
        for name in list(self._modules):
            self.load(name)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if values:
            self.load(values[0])
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    """The `attnlab` parser. Cheap: each command's own parser is built when that command is parsed."""
    from attnlab._version import __version__

    parser = argparse.ArgumentParser(
        prog="attnlab",
        description="A laboratory for the attention mechanism: softmax variants, streaming attention, "
        "and pathology diagnostics on real models.",
    )
    parser.add_argument("--version", action="version", version=f"attnlab {__version__}")
    parser.register("action", "lazy_parsers", _LazySubParsers)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action="lazy_parsers")
    for name, (module, help_line) in COMMANDS.items():
        sub.add_lazy(name, module, help_line)
    return parser


def main(argv: list[str] | None = None) -> int:
    from attnlab.errors import AttnlabError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse reports a sub-command's stray arguments with the top-level usage; show the usage of
        # the command they were given to instead.
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with _warnings_as_lines():
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


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Show each AttnlabWarning (a setting that makes no sense for the run) as one line on stderr, every
    time, like the errors; other warnings keep Python's format."""
    from attnlab.advice import AttnlabWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", AttnlabWarning)
        default = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            if issubclass(category, AttnlabWarning):
                print(f"attnlab: warning: {message}", file=sys.stderr, flush=True)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub-)sub-command that `args` selected."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name is None or name not in subs[0].choices:
            return parser
        parser = subs[0].load(name) if isinstance(subs[0], _LazySubParsers) else subs[0].choices[name]


def _is_internal(exc: BaseException) -> bool:
    """True for errors raised inside torch, transformers or the standard library rather than by attnlab:
    those are bugs (attnlab turns a user's bad file into an AttnlabError where it opens it), so they keep
    their traceback. An OSError that names a file is about that file, not a bug."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return False
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    filename = last.tb_frame.f_code.co_filename
    return not filename.startswith((_PACKAGE_DIR, "<"))


# The installed package's folder, with a separator, so a checkout or venv that merely has "attnlab" in its
# path does not make torch's own frames look like attnlab's.
_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "")


if __name__ == "__main__":
    sys.exit(main())
