"""Benchmark: every normalizer and span of `attnlab.attention` against the stock kernel, same run.

Baseline: `torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)` (causal softmax) on the
same inputs (batch 1, 8 heads, head_dim 64, float32). Each variant and the baseline are timed in
alternation (median of repeats after warm-up), forward (no grad) and forward+backward, and the ratio
variant / baseline is printed with the peak memory of forward+backward. Targets (issue 2, 2-core CPU):
softmax1 and Sinks <= 1.15x; adaptive <= 2.3x; Window(512) at seq 8192 >= 5x faster than causal SDPA
and linear in seq. Clipped and softpick have no kernel identity (blocked over query rows), so they have no
target; a variant timed on both backends ("X" and "X (reference)") also gets its fast-path / reference ratio.

    .venv/bin/python benchmarks/attention.py [--quick] [--json PATH] [--repeats N]

On CUDA (when present; `--device cuda` for that section alone) a second section times the same variants in
bfloat16 against SDPA restricted to its flash backend, up to seq 16384.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import base_parser, median_time, peak_memory, print_table, reuse_malloc, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from attnlab.attention import (  # noqa: E402
    Adaptive,
    Chunked,
    Clipped,
    ScalableSoftmax,
    Sinks,
    SinkWindow,
    Softmax,
    Softmax1,
    Window,
    attention,
)
from attnlab.attention.variants.softpick import Softpick  # noqa: E402

HEADS, DIM = 8, 64
# (label, normalizer factory, span, target ratio for fwd and fwd+bwd or None)
VARIANTS: list[tuple[str, Callable[[], object], object, float | None]] = [
    ("softmax", Softmax, "causal", None),
    ("softmax1", Softmax1, "causal", 1.15),
    ("sinks", lambda: Sinks(torch.linspace(-1, 1, HEADS).requires_grad_()), "causal", 1.15),
    ("adaptive", Adaptive, "causal", 2.3),
    ("ssmax", ScalableSoftmax, "causal", None),
    ("ssmax(per-head)", lambda: ScalableSoftmax(torch.full((HEADS,), 0.2).requires_grad_()), "causal", None),
    ("clipped", Clipped, "causal", None),
    ("softpick", Softpick, "causal", None),
    ("softmax full", Softmax, "full", None),
    ("softmax window(512)", Softmax, Window(512), None),
    ("softmax1 window(512)", Softmax1, Window(512), None),
    ("softmax sinkwindow(4,512)", Softmax, SinkWindow(4, 512), None),
    ("softmax chunked(512)", Softmax, Chunked(512), None),
    ("softmax1 (reference)", Softmax1, "causal", None),
    ("softpick (reference)", Softpick, "causal", None),
]


def _paired(fn: Callable[[], object], base: Callable[[], object], repeats: int,
            sync: Callable[[], None] | None) -> tuple[float, float]:
    """Median seconds of fn and of base, timed in alternation so load drift hits both alike."""
    tf, tb = [], []
    for _ in range(repeats):
        tb.append(median_time(base, repeats=1, warmup=0, sync=sync))
        tf.append(median_time(fn, repeats=1, warmup=0, sync=sync))
    return sorted(tf)[len(tf) // 2], sorted(tb)[len(tb) // 2]


def _on_device(norm: object, device: torch.device) -> object:
    """Learned parameters live where the model does (no per-call host-to-device copy on CUDA)."""
    if isinstance(norm, Sinks):
        return Sinks(norm.logits.detach().to(device).requires_grad_(norm.logits.requires_grad))
    if isinstance(norm, ScalableSoftmax) and isinstance(norm.s, torch.Tensor):
        return ScalableSoftmax(norm.s.detach().to(device).requires_grad_(norm.s.requires_grad))
    return norm


def bench(device: str, seqs: list[int], repeats: int, baseline: Callable[..., torch.Tensor],
          max_reference_seq: int = 2048, dtype: torch.dtype = torch.float32) -> list[dict]:
    """Rows of timings for every variant at every seq; the eager reference only up to max_reference_seq."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for seq in seqs:
        inputs = [torch.randn(1, HEADS, seq, DIM, generator=gen).to(device, dtype) for _ in range(4)]
        rows += _bench_seq(device, seq, inputs, repeats, baseline, seq <= max_reference_seq)
    return rows


def _bench_seq(device: str, seq: int, inputs: list[torch.Tensor], repeats: int,
               baseline: Callable[..., torch.Tensor], with_reference: bool) -> list[dict]:
    sync = torch.cuda.synchronize if device == "cuda" else None
    q, k, v, dy = inputs
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

    def base_fwd() -> None:
        with torch.no_grad():
            baseline(q, k, v)

    def base_both() -> None:
        baseline(qg, kg, vg).backward(dy)

    base_peak = peak_memory(base_both, device)
    rows = []
    for label, make, span, target in VARIANTS:
        reference = "(reference)" in label
        if reference and not with_reference:
            continue
        norm = _on_device(make(), q.device)
        backend = "reference" if reference else "fused"

        def fwd(norm: object = norm, span: object = span, backend: str = backend) -> None:
            with torch.no_grad():
                attention(q, k, v, normalizer=norm, span=span, backend=backend)

        def both(norm: object = norm, span: object = span, backend: str = backend) -> None:
            attention(qg, kg, vg, normalizer=norm, span=span, backend=backend).backward(dy)

        fwd()
        try:
            both()
            t_both, b_both = _paired(both, base_both, repeats, sync)
            peak = peak_memory(both, device)
        except NotImplementedError as exc:  # e.g. a backward with no kernel on this device
            t_both = b_both = peak = None
            print(f"  {label} at {seq}: forward+backward skipped: {exc}", file=sys.stderr)
        t_fwd, b_fwd = _paired(fwd, base_fwd, repeats, sync)
        row = {
            "device": device, "seq": seq, "variant": label,
            "fwd_ms": 1e3 * t_fwd, "fwd_ratio": t_fwd / b_fwd,
            "fwdbwd_ms": None if t_both is None else 1e3 * t_both,
            "fwdbwd_ratio": None if t_both is None else t_both / b_both,
            "peak_MB": None if peak is None else peak / 2**20, "sdpa_peak_MB": base_peak / 2**20,
            "target": target,
        }
        if target is not None and t_both is not None:
            row["ok"] = "yes" if max(row["fwd_ratio"], row["fwdbwd_ratio"]) <= target else "NO"
        rows.append(row)
        print(f"  {device} seq {seq:5d} {label:28s} fwd x{row['fwd_ratio']:.2f}"
              + ("" if t_both is None else f"  fwd+bwd x{row['fwdbwd_ratio']:.2f}"), file=sys.stderr)
    return rows


def window_summary(rows: list[dict]) -> list[dict]:
    """Window(512) against causal SDPA, and how its time grows with seq (linear: x4 per 4x seq)."""
    out = []
    win = {r["seq"]: r for r in rows if r["variant"] == "softmax window(512)"}
    seqs = sorted(win)
    for a, b in zip(seqs, seqs[1:]):
        out.append({"device": win[b]["device"], "from_seq": a, "to_seq": b,
                    "seq_factor": b / a, "fwd_time_factor": win[b]["fwd_ms"] / win[a]["fwd_ms"],
                    "speedup_vs_sdpa_fwd": 1 / win[b]["fwd_ratio"],
                    "speedup_vs_sdpa_fwdbwd": 1 / win[b]["fwdbwd_ratio"] if win[b]["fwdbwd_ratio"] else None})
    return out


def reference_summary(rows: list[dict]) -> list[dict]:
    """Each fast path against its own reference backend, same seq: the ratio of their times (each timed
    against the baseline in alternation, so the baseline's drift cancels only to first order)."""
    out = []
    ref = {(r["device"], r["seq"], r["variant"][:-len(" (reference)")]): r for r in rows
           if r["variant"].endswith(" (reference)")}
    for r in rows:
        twin = ref.get((r["device"], r["seq"], r["variant"]))
        if twin is None:
            continue
        out.append({"device": r["device"], "seq": r["seq"], "variant": r["variant"],
                    "fwd_vs_reference": r["fwd_ms"] / twin["fwd_ms"],
                    "fwdbwd_vs_reference": (r["fwdbwd_ms"] / twin["fwdbwd_ms"]
                                            if r["fwdbwd_ms"] and twin["fwdbwd_ms"] else None),
                    "peak_MB": r["peak_MB"], "reference_peak_MB": twin["peak_MB"]})
    return out


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="TEXT", default=None,
                        help="time only the variants whose label contains TEXT (the baseline always runs)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="which section to run (default: CPU, and CUDA when present)")
    parser.add_argument("--cuda-dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16",
                        help="CUDA inputs (default bfloat16: SDPA's flash backend takes half precision only)")
    args = parser.parse_args()
    if args.only:
        VARIANTS[:] = [row for row in VARIANTS if args.only in row[0]]
        if not VARIANTS:
            parser.error(f"--only {args.only!r} matches no variant")
    reuse_malloc()
    torch.manual_seed(0)
    seqs = [512, 2048] if args.quick else [512, 2048, 8192]
    repeats = args.repeats or (3 if args.quick else 5)
    cols = ["seq", "variant", "fwd_ms", "fwd_ratio", "fwdbwd_ms", "fwdbwd_ratio", "peak_MB", "sdpa_peak_MB",
            "target", "ok"]

    def sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    rows, summary = [], []
    if args.device in ("cpu", "all"):
        print(f"CPU: {torch.get_num_threads()} threads, torch {torch.__version__}; "
              "baseline: causal SDPA float32")
        rows = bench("cpu", seqs, repeats, sdpa_causal)
        print_table(rows, cols)
        summary = window_summary(rows)
        print("\nWindow(512): growth with seq and speed-up over causal SDPA")
        print_table(summary, list(summary[0]) if summary else ["from_seq"])
        versus = reference_summary(rows)
        if versus:
            print("\nFast path / reference backend, same variant (< 1: the fast path is faster)")
            print_table(versus, list(versus[0]))

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        dtype = getattr(torch, args.cuda_dtype)
        print(f"\nCUDA ({torch.cuda.get_device_name()}, torch {torch.__version__}): "
              "baseline SDPA flash backend, "
              f"causal, {args.cuda_dtype}")
        cuda_rows = bench("cuda", seqs + ([] if args.quick else [16384]), max(repeats, 15), sdpa_flash,
                          dtype=dtype)
        print_table(cuda_rows, cols)
        rows += cuda_rows
        cuda_summary = window_summary(cuda_rows)
        print("\nCUDA Window(512): growth with seq and speed-up over causal SDPA (flash)")
        print_table(cuda_summary, list(cuda_summary[0]) if cuda_summary else ["from_seq"])
        summary += cuda_summary

    if args.json:
        from attnlab.io import provenance

        write_json(args.json, {
            "benchmark": "attention", "rows": rows, "window": summary,
            "provenance": provenance({"seqs": seqs, "repeats": repeats, "heads": HEADS, "head_dim": DIM,
                                      "batch": 1, "dtype": "float32", "cuda_dtype": args.cuda_dtype,
                                      "device": args.device, "only": args.only, "quick": args.quick},
                                     seed=0),
        })


if __name__ == "__main__":
    main()
