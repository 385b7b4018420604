"""`attnlab stream eval` (streaming perplexity) and `attnlab stream generate` (streaming generation)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attnlab.cli_flags import add_device_flags, load_kwargs

DEFAULT_OUT = "runs/stream"
DEFAULT_CHUNK = 256


def _help_from_registry(base: type[argparse.Action], suffix: str) -> type[argparse.Action]:
    """`base` with its help read from the policy registry when help is shown: the names are never a hand
    list, and building the parser stays free of torch (which the registry's policies import)."""

    class RegistryHelp(base):  # type: ignore[misc, valid-type]
        @property  # type: ignore[override]
        def help(self) -> str:
            from attnlab.stream.registry import policy_help

            return policy_help() + suffix

        @help.setter
        def help(self, value: object) -> None:
            pass

    return RegistryHelp


def _policy_args(p: argparse.ArgumentParser, many: bool) -> None:
    if many:
        p.add_argument("--policy", required=True, metavar="POLICY", action=_help_from_registry(
            argparse._AppendAction, ". Repeat to compare policies in one run (one plot, one JSON)."))
    else:
        p.add_argument("--policy", default="sinks", metavar="POLICY",
                       action=_help_from_registry(argparse._StoreAction, " (default sinks)"))
    # Defaults are None here and filled in by _policies, so a size flag no policy reads can be told apart
    # from its default and warned about.
    p.add_argument("--sinks", type=int, default=None, help="attention sinks S for --policy sinks (default 4)")
    p.add_argument("--window", type=int, default=None,
                   help="recent tokens W kept by window/sinks/recompute/memory, the query included "
                   "(default 1020)")
    p.add_argument("--chunk-size", type=int, default=None, dest="chunk_size",
                   help="chunk C for --policy chunked (default 512)")
    p.add_argument("--model", default="smollm2-135m",
                   help="model name, Hugging Face hub id in the local cache ('gpt2', 'org/name') or path "
                   "(default smollm2-135m)")
    add_device_flags(p)


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
    ev.add_argument("--chunk", type=int, default=None,
                    help=f"tokens per forward in --mode chunked (default {DEFAULT_CHUNK})")
    ev.add_argument("--stride", type=int, default=1,
                    help="recompute only: score every k-th position (each exactly) to save time")
    ev.add_argument("--bin-size", type=int, default=1000, dest="bin_size", help="tokens per perplexity bin")
    ev.add_argument("--out", metavar="DIR|FILE.json", default=DEFAULT_OUT,
                    help=f"a folder for results.json and nll.png (default {DEFAULT_OUT}), or a .json file "
                    f"for the results alone (written atomically)")
    ev.add_argument("--plot", metavar="FILE.png", default=None,
                    help="NLL vs position, policies side by side (default: DIR/nll.png when --out is a "
                    "folder)")
    ev.add_argument("--no-nll", action="store_true", help="leave per-token NLLs out of the JSON (smaller)")
    ev.set_defaults(func=_eval)

    gen = sub.add_parser("generate", help="stream generated text turn after turn with constant memory",
                         description="Generate from --prompt, or from each line of stdin as a new turn of "
                         "the same stream. The cache policy bounds memory; it does not extend the context.")
    _policy_args(gen, many=False)
    gen.add_argument("--prompt", default=None,
                     help="one prompt (default: read turns from stdin, one per line)")
    gen.add_argument("--max-new-tokens", type=int, default=128, dest="max_new_tokens",
                     help="most tokens per reply, >= 1 (default 128)")
    gen.add_argument("--temperature", type=float, default=0.0,
                     help="0 = greedy (default); a finite value > 0 samples")
    gen.add_argument("--top-k", type=int, default=0, dest="top_k",
                     help="when sampling, draw from the k most likely tokens only; 0 = no cut (default)")
    gen.add_argument("--top-p", type=float, default=1.0, dest="top_p",
                     help="when sampling, draw from the smallest set of most likely tokens whose probability "
                     "adds up to at least P (nucleus sampling), 0 < P <= 1; 1 = no cut (default)")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, dest="repetition_penalty",
                     help="divide a positive logit (multiply a negative one) of every token already in this "
                     "turn's prompt or reply by this, as HF generate does; > 1 discourages repeats "
                     "(e.g. 1.2), 1 = off (default); greedy decoding too")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed, 0 .. 2**64-1 (default 0)")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                     help="wrap each turn in the tokenizer's chat template (default: when it has one)")
    gen.set_defaults(func=_generate)


def _load(args: argparse.Namespace) -> Any:
    from attnlab.advice import check_cpu_half
    from attnlab.models.loading import load_model

    check_cpu_half(args.device, args.dtype)
    return load_model(args.model, **load_kwargs(args))


def _outputs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """(results file, plot file or None) from --out (a folder, or a .json file) and --plot."""
    from attnlab.io import reject_empty

    reject_empty(args.out)
    reject_empty(args.plot, "--plot", "a .png file name")
    out = Path(args.out).expanduser()
    if out.suffix.lower() == ".json":
        return out, Path(args.plot) if args.plot else None
    return out / "results.json", Path(args.plot) if args.plot else out / "nll.png"


_SIZE_FLAGS = {  # dest: (flag, default, the size keyword it gives a bare policy name)
    "sinks": ("--sinks", 4, "sinks"),
    "window": ("--window", 1020, "window"),
    "chunk_size": ("--chunk-size", 512, "chunk"),
}


def _policies(args: argparse.Namespace, specs: list[str]) -> list[Any]:
    """The policies of `specs`, parsed once, before the model loads (so a bad spec fails in a second); a
    warning for each size flag that none of them reads: a spec with sizes, sinks(4,16), takes none from the
    flags. `_fit_context` then checks them against the model's context."""
    from attnlab.advice import advise
    from attnlab.stream.registry import parse_policy, size_readers

    bare = [s.strip().lower() for s in specs if "(" not in s]
    for dest, (flag, default, size) in _SIZE_FLAGS.items():
        value = getattr(args, dest)
        readers = size_readers(size)  # from the registry: the factories that take this size
        if value is None:
            setattr(args, dest, default)
        elif not any(name in readers for name in bare):
            advise(f"{flag} {value} is unused: {' and '.join('--policy ' + s for s in specs)} "
                   f"{'does' if len(specs) == 1 else 'do'} not read it (it sizes the bare policy names "
                   f"{', '.join(readers)}; a spec with sizes such as sinks(4,1020) sets its own)")
    return [parse_policy(s, sinks=args.sinks, window=args.window, chunk=args.chunk_size) for s in specs]


def _fit_context(args: argparse.Namespace, specs: list[str], policies: list[Any],
                 context: int | None) -> None:
    """Refuse a policy whose cache outgrows the loaded model's context. Only a policy that does is parsed
    again, with the context, so the registry's own message (naming the sizes the user set) is the error."""
    from attnlab.stream.registry import parse_policy

    for spec, pol in zip(specs, policies, strict=True):
        if context and pol.capacity is not None and pol.capacity > context:
            parse_policy(spec, sinks=args.sinks, window=args.window, chunk=args.chunk_size,
                         max_context=context)


def _eval(args: argparse.Namespace) -> int:
    from attnlab.advice import advise
    from attnlab.data.corpus import load_text
    from attnlab.errors import ConfigError, ModelError
    from attnlab.io import check_out_dir, check_out_file
    from attnlab.stream.eval import evaluate, plot_nll, save_results

    # Check the cheap things (settings, policies, output paths, text) before loading the model, so a
    # mistake fails in a second rather than after a long evaluation.
    chunk_given = args.chunk is not None
    args.chunk = DEFAULT_CHUNK if args.chunk is None else args.chunk
    for flag, value in (("--tokens", args.tokens), ("--chunk", args.chunk), ("--stride", args.stride),
                        ("--bin-size", args.bin_size)):
        if value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    policies = _policies(args, args.policy)
    # The one decision of each policy's stride: only a policy that scores positions independently strides.
    plan = [(pol, args.stride if pol.strides else 1) for pol in policies]
    out, plot = _outputs(args)
    if out.name == "results.json" and out.parent == Path(args.out).expanduser():
        check_out_dir(out.parent)  # --out names a folder: say so if it is a file
    check_out_file(out, flag="--out")
    if plot:
        check_out_file(plot, flag="--plot")
    _advise_eval(args, chunk_given, plan)
    text = load_text(args.text)
    lm = _load(args)
    _fit_context(args, args.policy, policies, lm.max_context or None)
    ids = lm.encode(text)
    if ids.shape[1] - 1 < args.tokens:
        advise(f"the text is {ids.shape[1]} tokens for {lm.name}, so {ids.shape[1] - 1} are scored, not "
               f"--tokens {args.tokens}; pass a longer --text (or a folder of texts)")
    if lm.max_context and min(args.tokens + 1, ids.shape[1]) > lm.max_context:
        for pol in policies:
            if pol.capacity is None:
                advise(f"--policy {pol.name} keeps every token, and the stream runs past {lm.name}'s context "
                       f"of {lm.max_context} tokens: positions beyond it were never trained, so its "
                       f"perplexity there measures that failure (StreamingLLM's baseline), not the policy")
    config = {k: v for k, v in vars(args).items() if k != "func"}
    config["text"] = args.text or "shakespeare"
    results = []
    for pol, stride in plan:
        res = evaluate(lm, ids, pol, args.tokens, mode=args.mode, chunk=args.chunk, stride=stride,
                       bin_size=args.bin_size)
        results.append(res)
        ppl = "n/a (not finite)" if res["perplexity"] is None else f"{res['perplexity']:.3f}"
        speed = "" if res["tokens_per_s"] is None else f"{res['tokens_per_s']:.1f} tok/s, "
        print(f"{pol.name:>18}: perplexity {ppl} over {res['tokens']} tokens, {speed}"
              f"cache {res['cache_bytes_final'] / 2**20:.2f} MiB", flush=True)
        # Written after every policy, so a long comparison keeps what it has finished.
        save_results(out, results if len(args.policy) > 1 else results[0], config,
                     keep_nll=not args.no_nll)
    print(f"wrote {out}")
    if plot:
        plot_nll(results, plot, title=f"{lm.name}, {args.mode} mode")
        print(f"wrote {plot}")
    failed = [r for r in results if r["perplexity"] is None]
    if failed:  # the main number is missing: a run that "succeeds" without it would pass for a result
        raise ModelError(f"no perplexity for --policy {failed[0]['policy']}: {failed[0]['perplexity_null']}; "
                         f"{out} holds null there")
    return 0


def _advise_eval(args: argparse.Namespace, chunk_given: bool, plan: list[tuple[Any, int]]) -> None:
    """Settings that run but do nothing, or nothing useful (checked before the model loads)."""
    from attnlab.advice import advise

    if chunk_given and args.mode == "token":
        advise("--chunk applies to --mode chunked; --mode token feeds one token per forward, so it is unused")
    if args.stride > 1 and all(stride == 1 for _, stride in plan):  # the plan's strides, decided once
        advise(f"--stride {args.stride} applies to the recompute policy only; the cache policies score every "
               f"token")
    if args.bin_size >= args.tokens:
        advise(f"--bin-size {args.bin_size} is not smaller than --tokens {args.tokens}, so the perplexity "
               f"per bin is one number; use a --bin-size of about a tenth of --tokens to see it change along "
               f"the stream")


def _generate(args: argparse.Namespace) -> int:
    from attnlab.errors import DataError
    from attnlab.stream.generate import StreamGenerator, check_sampling

    check_sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   seed=args.seed, top_p=args.top_p, repetition_penalty=args.repetition_penalty)
    if args.prompt is not None and not args.prompt.strip():
        raise DataError("--prompt is empty; give it some text, or leave --prompt out to read turns from "
                        "stdin")
    policy = _policies(args, [args.policy])[0]
    _advise_generate(args)
    lm = _load(args)
    _fit_context(args, [args.policy], [policy], lm.max_context or None)
    if policy.capacity is None and lm.max_context and args.max_new_tokens > lm.max_context:
        from attnlab.advice import advise

        advise(f"--max-new-tokens {args.max_new_tokens} with --policy {policy.name} runs past {lm.name}'s "
               f"context of {lm.max_context} tokens, where its output degrades; use --policy sinks to stream "
               f"past it")
    chat = args.chat
    if chat is None:
        chat = bool(getattr(getattr(lm.tokenizer, "hf", None), "chat_template", None))
    gen = StreamGenerator(lm, policy, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k, seed=args.seed, chat=chat, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty)
    turns = [args.prompt] if args.prompt is not None else _stdin_turns()
    for prompt in turns:
        if not prompt.strip():
            continue
        _advise_prompt(lm, policy, int(lm.encode(gen.format(prompt)).shape[1]))
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


def _advise_prompt(lm: Any, policy: Any, tokens: int) -> None:
    """A prompt past the model's context (what stream eval says of a text that runs past it)."""
    from attnlab.advice import advise

    if lm.max_context and tokens > lm.max_context:
        if policy.capacity is None:
            advise(f"the prompt is {tokens} tokens, past {lm.name}'s context of {lm.max_context}: --policy "
                   f"{policy.name} keeps them all, at positions the model never trained on, so the reply "
                   f"degrades; shorten the prompt or use --policy sinks")
        elif tokens > policy.capacity:
            advise(f"the prompt is {tokens} tokens and --policy {policy.name} keeps {policy.capacity} "
                   f"(past {lm.name}'s context of {lm.max_context}): the reply sees only those it keeps")


def _advise_generate(args: argparse.Namespace) -> None:
    from attnlab.advice import advise

    if args.temperature == 0 and args.top_k:
        advise(f"--top-k {args.top_k} applies when sampling; --temperature 0 is greedy, so it is unused "
               f"(pass --temperature 0.7, say, to sample)")
    if args.temperature == 0 and args.top_p < 1:
        advise(f"--top-p {args.top_p:g} applies when sampling; --temperature 0 is greedy, so it is unused "
               f"(pass --temperature 0.7, say, to sample)")
    if args.temperature == 0 and args.seed:
        advise(f"--seed {args.seed} applies when sampling; --temperature 0 is greedy and deterministic")


def _stdin_turns() -> Iterator[str]:
    """stdin's lines, decoded as UTF-8 one at a time (so the error names the line), without newlines."""
    from attnlab.errors import DataError

    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:  # a text stream without bytes underneath (e.g. io.StringIO): already decoded
        for line in sys.stdin:
            yield line.rstrip("\r\n")
        return
    for number, data in enumerate(raw, 1):
        try:
            yield data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise DataError(f"line {number} of stdin is not UTF-8 (invalid byte 0x{data[exc.start]:02x} at "
                            f"byte {exc.start}); convert the input first, e.g. iconv -f latin1 -t utf-8") \
                from None
