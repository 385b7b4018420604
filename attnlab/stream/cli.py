"""`attnlab stream eval` (streaming perplexity) and `attnlab stream generate` (streaming generation)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _policy_args(p: argparse.ArgumentParser, many: bool) -> None:
    help_policy = ("full, window, sinks, chunked, recompute, memory; or a spec with sizes such as "
                   "sinks(4,1020), window(1024), recompute(1024)")
    if many:
        p.add_argument("--policy", action="append", required=True, metavar="POLICY",
                       help=help_policy + ". Repeat to compare policies in one run (one plot, one JSON).")
    else:
        p.add_argument("--policy", default="sinks", metavar="POLICY", help=help_policy + " (default sinks)")
    p.add_argument("--sinks", type=int, default=4, help="attention sinks S for --policy sinks (default 4)")
    p.add_argument("--window", type=int, default=1020,
                   help="recent tokens W kept by window/sinks/recompute, the query included (default 1020)")
    p.add_argument("--chunk-size", type=int, default=512, dest="chunk_size",
                   help="chunk C for --policy chunked (default 512)")
    p.add_argument("--model", default="smollm2-135m", help="model name or path (default smollm2-135m)")


def register(subparsers: argparse._SubParsersAction) -> None:
    stream = subparsers.add_parser("stream",
                                   help="streaming inference: cache policies, perplexity, generation",
                                   description="Constant-memory inference over unbounded text "
                                   "(StreamingLLM attention sinks, windows, chunks). See docs/streaming.md.")
    sub = stream.add_subparsers(dest="stream_command", metavar="SUBCOMMAND")
    stream.set_defaults(func=lambda args: stream.print_help())

    ev = sub.add_parser("eval", help="streaming perplexity of a text under one or more cache policies",
                        description="Feed a text as one stream and score every token (NLL per token, "
                        "perplexity overall and per 1K-token bin, tokens/s, memory).")
    _policy_args(ev, many=True)
    ev.add_argument("--text", metavar="FILE", default=None,
                    help="UTF-8 text file or folder of .txt files (default: the Shakespeare corpus)")
    ev.add_argument("--tokens", type=int, default=20000, help="tokens to score (default 20000)")
    ev.add_argument("--mode", choices=("token", "chunked"), default="token",
                    help="token: one token per forward, as the paper (default); chunked: several at once, "
                    "same NLLs, faster")
    ev.add_argument("--chunk", type=int, default=256,
                    help="tokens per forward in --mode chunked (default 256)")
    ev.add_argument("--stride", type=int, default=1,
                    help="recompute only: score every k-th position (each exactly) to save time")
    ev.add_argument("--bin-size", type=int, default=1000, dest="bin_size", help="tokens per perplexity bin")
    ev.add_argument("--out", metavar="FILE.json", required=True, help="results JSON (written atomically)")
    ev.add_argument("--plot", metavar="FILE.png", default=None, help="NLL vs position, policies side by side")
    ev.add_argument("--no-nll", action="store_true", help="leave per-token NLLs out of the JSON (smaller)")
    ev.set_defaults(func=_eval)

    gen = sub.add_parser("generate", help="stream generated text turn after turn with constant memory",
                         description="Generate from --prompt, or from each line of stdin as a new turn of "
                         "the same stream. The cache policy bounds memory; it does not extend the context.")
    _policy_args(gen, many=False)
    gen.add_argument("--prompt", default=None,
                     help="one prompt (default: read turns from stdin, one per line)")
    gen.add_argument("--max-new-tokens", type=int, default=128, dest="max_new_tokens")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    gen.add_argument("--top-k", type=int, default=None, dest="top_k")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                     help="wrap each turn in the tokenizer's chat template (default: when it has one)")
    gen.set_defaults(func=_generate)


def _load(args: argparse.Namespace) -> Any:
    import attnlab

    return attnlab.load_model(args.model)


def _policies(args: argparse.Namespace, specs: list[str], context: int | None) -> list[Any]:
    from attnlab.stream.policies import parse_policy

    return [parse_policy(s, sinks=args.sinks, window=args.window, chunk=args.chunk_size, max_context=context)
            for s in specs]


def _eval(args: argparse.Namespace) -> int:
    from attnlab.data.corpus import load_text
    from attnlab.stream.eval import plot_nll, save_results, stream_eval
    from attnlab.stream.policies import RecomputePolicy

    # Check the cheap things (policies, text) before loading the model.
    _policies(args, args.policy, None)
    text = load_text(args.text)
    lm = _load(args)
    policies = _policies(args, args.policy, lm.max_context or None)
    ids = lm.encode(text)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    config["text"] = args.text or "shakespeare"
    results = []
    for pol in policies:
        stride = args.stride if isinstance(pol, RecomputePolicy) else 1
        res = stream_eval(lm, ids, pol, args.tokens, mode=args.mode, chunk=args.chunk, stride=stride,
                          bin_size=args.bin_size)
        results.append(res)
        print(f"{pol.name:>18}: perplexity {res['perplexity']:.3f} over {res['tokens']} tokens, "
              f"{res['tokens_per_s']:.1f} tok/s, cache {res['cache_bytes_final'] / 2**20:.2f} MiB",
              flush=True)
        # Written after every policy, so a long comparison keeps what it has finished.
        save_results(args.out, results if len(args.policy) > 1 else results[0], config,
                     keep_nll=not args.no_nll)
    print(f"wrote {args.out}")
    if args.plot:
        plot_nll(results, args.plot, title=f"{lm.name}, {args.mode} mode")
        print(f"wrote {args.plot}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from attnlab.stream.generate import StreamGenerator

    _policies(args, [args.policy], None)
    lm = _load(args)
    policy = _policies(args, [args.policy], lm.max_context or None)[0]
    chat = args.chat
    if chat is None:
        chat = bool(getattr(getattr(lm.tokenizer, "hf", None), "chat_template", None))
    gen = StreamGenerator(lm, policy, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k, seed=args.seed, chat=chat)
    turns = [args.prompt] if args.prompt is not None else (line.rstrip("\n") for line in sys.stdin)
    for prompt in turns:
        if not prompt.strip():
            continue
        for piece in gen.turn(prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
    if gen.stats:
        new = sum(s.new_tokens for s in gen.stats)
        secs = sum(s.seconds for s in gen.stats)
        last = gen.stats[-1]
        print(f"[{new} tokens in {secs:.1f} s, {new / secs:.1f} tok/s; stream {last.stream_tokens} tokens, "
              f"cache {last.cache_bytes / 2**20:.1f} MiB ({policy.name})]", file=sys.stderr)
    return 0
