"""Streaming perplexity (StreamingLLM, Xiao et al. 2024, sec. 4.1 and Fig. 3/5, Table 1).

The text is fed to the model as one stream; token u+1 is scored from the cache the policy left after token
u, and

    NLL_u = -log p(x_{u+1} | cache(x_0 .. x_u)),     perplexity = exp(mean_u NLL_u)

reported overall (key "perplexity") and per bin of `bin_size` (1000) tokens, so a blow-up once the first
tokens leave the cache (window attention) shows as the bins climbing, and a flat line is what StreamingLLM
claims for attention sinks.

mode="token" feeds one token per forward, as the paper does. mode="chunked" feeds `chunk` tokens per
forward with each query's visibility and RoPE distances exactly as token by token (see
`attnlab.stream.cache`), so it gives the same NLLs (to float rounding) several times faster.
recompute(W) runs the model afresh over each scored token's last W tokens (exact for that token); with
`stride` k only every k-th position is scored (an unbiased subsample of positions, each scored exactly),
because the baseline costs W times more work per token.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.errors import ConfigError, DataError
from attnlab.stream.policies import Policy
from attnlab.stream.runner import StreamRunner, _unwrap

if TYPE_CHECKING:
    from attnlab.train.progress import Counter

MODES = ("token", "chunked")


def rss_bytes() -> int:
    """Resident set size of this process now (0 where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def peak_rss_bytes() -> int:
    """High-water mark of the resident set size (VmHWM) of this process."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stream_ids(model: Any, text: str | Tensor, tokens: int | None) -> Tensor:
    """Token ids (1, n) of the stream: `tokens` NLLs need tokens + 1 ids."""
    if isinstance(text, Tensor):
        ids = text if text.dim() == 2 else text[None]
    else:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str or token ids, got {type(text).__name__}")
        if not text.strip():
            raise DataError("the text to stream is empty; pass a non-empty UTF-8 text (or --text FILE)")
        if not hasattr(model, "encode"):
            raise TypeError("pass token ids, or a LoadedModel (attnlab.load_model) that can encode text")
        ids = model.encode(text)
    ids = ids.long().cpu()
    if tokens is not None:
        if tokens < 1:
            raise ConfigError(f"tokens must be >= 1, got {tokens}")
        ids = ids[:, : tokens + 1]
    if ids.shape[1] < 2:
        raise DataError(f"the text has {ids.shape[1]} token(s); streaming perplexity needs at least 2")
    return ids


def _nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token NLL in float64: logits (B, q, V), targets (B, q) -> (B, q)."""
    logp = F.log_softmax(logits.double(), dim=-1)
    return -logp.gather(-1, targets[..., None])[..., 0]


def stream_eval(model: Any, text: str | Tensor, policy: Policy, tokens: int | None = 20000, *,
                mode: str = "token", chunk: int = 256, stride: int = 1, bin_size: int = 1000,
                progress: bool = True, batch: int = 8) -> dict[str, Any]:
    """Stream `text` through `model` under `policy`; returns NLLs, perplexity overall and per bin, speed,
    and memory. `model` is a LoadedModel (or a bare HF model / attnlab GPT with `text` given as ids)."""
    check_settings(policy, mode=mode, chunk=chunk, stride=stride, bin_size=bin_size, batch=batch)
    return evaluate(model, text, policy, tokens, mode=mode, chunk=chunk, stride=stride, bin_size=bin_size,
                    progress=progress, batch=batch)


def check_settings(policy: Policy, *, mode: str, chunk: int, stride: int, bin_size: int, batch: int) -> None:
    """What `stream_eval` refuses: an unknown mode, a size below 1, a stride for a policy that scores every
    token. A caller that checked its settings already (the CLI, at its edge) calls `evaluate` directly."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if chunk < 1 or stride < 1 or bin_size < 1 or batch < 1:
        raise ConfigError(f"chunk, stride, bin_size and batch must be >= 1, got "
                          f"{chunk}, {stride}, {bin_size}, "
                          f"{batch}")
    if stride > 1 and not policy.strides:
        raise ConfigError(f"stride applies to the recompute policy only ({policy.name} scores every token); "
                          f"leave --stride at 1")


def evaluate(model: Any, text: str | Tensor, policy: Policy, tokens: int | None, *, mode: str, chunk: int,
             stride: int, bin_size: int, progress: bool = True, batch: int = 8) -> StreamResult:
    """`stream_eval` on settings `check_settings` has passed (not checked again)."""
    from attnlab.train.progress import counter  # importing attnlab.train at the top pulls in the trainer

    module, _, _ = _unwrap(model)
    ids = stream_ids(model, text, tokens).to(next(module.parameters()).device)
    n = ids.shape[1] - 1  # scored positions 0 .. n-1
    nll = torch.full((n,), float("nan"), dtype=torch.float64)  # NaN until scored (recompute skips some)
    rss_bins: list[int] = []
    cache_peak = 0
    start = time.perf_counter()
    bar = counter(n, f"stream {policy.name}", progress)  # counted in scored tokens
    if policy.strides:  # positions scored independently (recompute): every `stride`-th, `batch` per forward
        scored = _eval_positions(module, ids, policy, nll, 1 if mode == "token" else batch, stride, bar,
                                 bin_size, rss_bins)
        cache_peak = policy.capacity * ids.element_size()  # the token window the policy re-reads
        cache_final, cache_len = cache_peak, min(policy.capacity, n)
    else:
        runner = StreamRunner(model, policy, max_step=1 if mode == "token" else chunk)
        step = 1 if mode == "token" else chunk
        pos = 0
        next_bin = bin_size
        while pos < n:
            q = min(step, n - pos)
            logits = runner.feed(ids[:, pos:pos + q])
            nll[pos:pos + q] = _nll(logits, ids[:, pos + 1:pos + q + 1])[0].cpu()
            cache_peak = max(cache_peak, runner.cache_bytes())
            pos += q
            bar.update(q)
            while pos >= next_bin:
                rss_bins.append(rss_bytes())
                next_bin += bin_size
        scored = n
        cache_final, cache_len = runner.cache_bytes(), runner.cache_length()
    bar.close()
    scored_mask = torch.zeros(n, dtype=torch.bool)
    scored_mask[::stride] = True  # the positions the loops above wrote (every one unless recompute strides)
    seconds = time.perf_counter() - start
    result = summarize(nll, scored_mask, policy=policy, mode=mode, chunk=chunk if mode == "chunked" else 1,
                       stride=stride,
                       bin_size=bin_size, seconds=seconds, scored=scored, stream_tokens=int(ids.shape[1]),
                       cache_peak=cache_peak, cache_final=cache_final, cache_length=cache_len,
                       rss_bins=rss_bins, model_name=getattr(model, "name", type(module).__name__))
    return StreamResult(result)


@torch.no_grad()
def _eval_positions(module: torch.nn.Module, ids: Tensor, policy: Policy, nll: Tensor, per: int, stride: int,
                    bar: Counter, bin_size: int, rss_bins: list[int]) -> int:
    """Score every `stride`-th position with the policy's own independent scorer (`Policy.score`)."""
    module.eval()
    scored_pos = list(range(0, nll.numel(), stride))
    next_bin = bin_size
    for us, logits in policy.score(module, ids, scored_pos, per):  # logits (b, 1, V)
        u = torch.tensor(us)
        nll[u] = _nll(logits, ids[0, u + 1][:, None])[:, 0].cpu()
        bar.update(len(us))
        while us[-1] + 1 >= next_bin:
            rss_bins.append(rss_bytes())
            next_bin += bin_size
    return len(scored_pos)


def summarize(nll: Tensor, scored_mask: Tensor | None = None, *, policy: Policy, mode: str, chunk: int,
              stride: int, bin_size: int, seconds: float,
              scored: int, stream_tokens: int, cache_peak: int, cache_final: int, cache_length: int,
              rss_bins: Sequence[int], model_name: str) -> dict[str, Any]:
    """The results dict: overall and per-bin perplexity over the scored positions (`scored_mask`; default:
    the non-NaN ones). A scored position whose NLL is not finite (NaN or infinite logits: a non-finite
    weight or activation) makes the perplexities it enters null, with the reason in `perplexity_null`:
    averaging the rest would hide the failure behind a plausible number."""
    scored_mask = ~torch.isnan(nll) if scored_mask is None else scored_mask
    finite = torch.isfinite(nll)
    bad = scored_mask & ~finite
    n_bad = int(bad.sum())
    ok = scored_mask & finite
    mean = float(nll[ok].mean()) if ok.any() and not n_bad else None
    bins = []
    for lo in range(0, nll.numel(), bin_size):
        part, in_part = nll[lo:lo + bin_size], scored_mask[lo:lo + bin_size]
        if in_part.any():
            vals = part[in_part]
            good = bool(torch.isfinite(vals).all())
            bins.append({"start": lo, "end": min(lo + bin_size, nll.numel()), "tokens": int(vals.numel()),
                         "nll": float(vals.mean()) if good else None,
                         "perplexity": math.exp(float(vals.mean())) if good else None})
    result = {
        "model": model_name, "policy": policy.name, "mode": mode, "chunk": chunk, "stride": stride,
        "cache_capacity": policy.capacity, "stream_tokens": stream_tokens, "tokens": scored,
        "nll_mean": mean, "perplexity": None if mean is None else math.exp(mean),
        "bin_size": bin_size, "bins": bins,
        "seconds": seconds, "tokens_per_s": scored / seconds if seconds > 0 else None,
        "cache_bytes_peak": cache_peak, "cache_bytes_final": cache_final, "cache_length_final": cache_length,
        "rss_bytes_per_bin": list(rss_bins), "peak_rss_bytes": peak_rss_bytes(),
        "nll": [round(x, 5) if math.isfinite(x) else None for x in nll.tolist()],
    }
    if mean is None:
        result["perplexity_null"] = (
            f"{n_bad} of {int(scored_mask.sum())} scored positions had a non-finite NLL (the model gave NaN "
            f"or infinite logits: check it for non-finite weights)" if n_bad else "no position was scored")
    return result


def plot_nll(results: Sequence[dict[str, Any]], path: str | Path, *, smooth: int = 100,
             title: str | None = None) -> Path:
    """NLL vs stream position, one panel per policy side by side (rolling mean over `smooth` tokens),
    in the page style of `attnlab.present`; written atomically."""
    from attnlab.present.plots import save_png

    return save_png(nll_figure(results, smooth=smooth, title=title), path)


def nll_figure(results: Sequence[dict[str, Any]], *, smooth: int = 100, title: str | None = None) -> Any:
    """The figure `plot_nll` writes (results need their per-token "nll")."""
    from attnlab.present import fmt_num
    from attnlab.present.plots import figure

    if not results:
        raise ValueError("plot_nll needs at least one result")
    fig, axes = figure(3.6 * len(results), 3.2, ncols=len(results), sharey=True)
    for ax, res in zip(np.atleast_1d(axes), results):
        vals = torch.tensor([float("nan") if x is None else x for x in res["nll"]], dtype=torch.float64)
        pos = torch.arange(vals.numel())
        ok = ~torch.isnan(vals)
        v, p = vals[ok], pos[ok]
        k = max(1, min(smooth // max(1, res.get("stride", 1)), v.numel()))
        kernel = torch.ones(1, 1, k, dtype=torch.float64) / k
        sm = F.conv1d(v[None, None], kernel)[0, 0] if v.numel() >= k else v
        ax.plot(p[k - 1:k - 1 + sm.numel()].numpy(), sm.numpy(), lw=1)
        ax.set_title(f"{res['policy']}\nppl {fmt_num(res['perplexity'], 5)}", fontsize=9)
        ax.set_xlabel("stream position (tokens)")
        cap = res.get("cache_capacity")
        if cap:
            ax.axvline(cap, color="grey", lw=0.6, ls="--")
    np.atleast_1d(axes)[0].set_ylabel(f"NLL (mean of {smooth} tokens)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


class StreamResult(dict):
    """What `stream_eval` returns: the results dict itself (index it, save it as JSON), which a notebook
    shows as a table of the headline numbers and the NLL-vs-position plot."""

    ROWS = (("perplexity", "perplexity"), ("nll_mean", "mean NLL (nats / token)"),
            ("tokens", "tokens scored"), ("tokens_per_s", "tokens / s"),
            ("cache_capacity", "cache capacity (tokens)"), ("cache_length_final", "cache length at the end"))

    def to_json(self) -> dict[str, Any]:
        return dict(self)

    def _repr_html_(self) -> str:
        import html

        from attnlab.present import fmt_num

        cells = [(label, fmt_num(self.get(key), 4)) for key, label in self.ROWS]
        cells.append(("cache at the end (MiB)", fmt_num(self.get("cache_bytes_final", 0) / 2**20, 3)))
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{html.escape(v)}</td></tr>"
                       for k, v in cells)
        model, policy, mode = (html.escape(str(self.get(k, ""))) for k in ("model", "policy", "mode"))
        head = f"<b>{model}</b>, policy <code>{policy}</code>, {mode} mode"
        img = ""
        if self.get("nll") and any(x is not None for x in self["nll"]):
            from attnlab.present.plots import png_data_uri

            smooth = max(1, min(100, len(self["nll"]) // 10))
            uri = png_data_uri(nll_figure([self], smooth=smooth))
            img = f"<img alt='NLL vs stream position' src='{uri}' style='max-width:100%'>"
        return f"<div>{head}<table>{rows}</table>{img}</div>"


def save_results(path: str | Path, results: dict[str, Any] | list[dict[str, Any]], config: dict[str, Any],
                 *, keep_nll: bool = True) -> Path:
    """Write results JSON atomically with provenance (config, seed, versions, created)."""
    from attnlab.io import atomic_write_json, provenance

    items = results if isinstance(results, list) else [results]
    if not keep_nll:
        items = [{k: v for k, v in r.items() if k != "nll"} for r in items]
    payload = {"provenance": provenance(config, seed=0), "results": items if isinstance(results, list)
               else items[0]}
    return atomic_write_json(path, payload, strict=True)
