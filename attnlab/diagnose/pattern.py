"""One head's attention pattern on one text, for a notebook: `attnlab.attention_pattern(model, text, layer,
head)` returns an `AttentionPattern`, shown inline as a heatmap over the tokens with the numbers that
summarise it (entropy, attention on token 0, weight on the null sink). In Jupyter the view is interactive and
self-contained (attnlab.diagnose.pattern_view: a head selector, token labels, hover readout of both tokens
and the weight, every head of the layer as small multiples; inline script, nothing fetched); frontends
without HTML get the static PNG (`_repr_png_`, also `.png()` and `.save(path)`).

    weights  (q, k)  row i: how query token i spreads its attention over the keys (causal: k <= i)

Definitions as in docs/diagnostics.md: entropy of a row H_i = -sum_j w_ij log w_ij (nats); first-token
attention = the mean over queries of w_i0 (Gu et al. 2024 call a head a sink when it exceeds 0.3); null
sink = 1 - the mean row sum (non-zero only for normalizers that may attend to nothing: softmax1, sinks).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab.errors import ConfigError, DataError

MAX_LABELLED_TOKENS = 48  # more tick labels than this are unreadable; the heatmap then shows positions


class AttentionPattern:
    """Attention weights (q, k) of one head (or the mean over heads) and the tokens they are over."""

    def __init__(self, weights: Tensor, tokens: Sequence[str], *, layer: int | None = None,
                 head: int | None = None, model: str = "", heads: Tensor | None = None) -> None:
        w = torch.as_tensor(weights).detach().to("cpu", torch.float64)
        if w.dim() != 2:
            raise ValueError(f"weights must be (queries, keys) for one head, got shape {tuple(w.shape)}; "
                             f"pick a head (weights[h]) or average them (weights.mean(0))")
        if len(tokens) != w.shape[1]:
            raise ValueError(f"{len(tokens)} tokens for {w.shape[1]} keys; pass one token string per key")
        self.weights, self.tokens = w, [str(t) for t in tokens]
        self.layer, self.head, self.model = layer, head, model
        # every head of the layer (H, q, k), for the interactive view's selector and small multiples
        self.heads = None if heads is None else torch.as_tensor(heads).detach().to("cpu", torch.float64)
        if self.heads is not None and (self.heads.dim() != 3 or self.heads.shape[1:] != w.shape):
            raise ValueError(f"heads must be (heads, {w.shape[0]}, {w.shape[1]}), got "
                             f"{tuple(self.heads.shape)}")

    # -- the numbers ------------------------------------------------------------------------------------
    def entropy(self) -> Tensor:
        """Entropy (nats) of each query's row, (q,)."""
        w = self.weights
        return -(w * torch.where(w > 0, w.log(), torch.zeros_like(w))).sum(-1)

    def summary(self) -> dict[str, float]:
        rows = self.weights.sum(-1)
        return {"entropy_mean": float(self.entropy().mean()),
                "first_token": float(self.weights[:, 0].mean()),
                "null_sink": float(1 - rows.mean())}

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "layer": self.layer, "head": self.head, "tokens": self.tokens,
                "weights": self.weights.tolist(), "summary": self.summary()}

    @property
    def title(self) -> str:
        head = "mean over heads" if self.head is None else f"head {self.head}"
        where = f"layer {self.layer}, {head}" if self.layer is not None else head
        return f"{self.model}: {where}" if self.model else where

    # -- the picture ------------------------------------------------------------------------------------
    def figure(self) -> Any:
        from attnlab.present.plots import colorbar, figure

        n_q, n_k = self.weights.shape
        side = min(9.0, max(4.0, 0.16 * n_k + 2.5))
        fig, ax = figure(side + 0.8, side)
        im = ax.imshow(self.weights.numpy(), cmap="viridis", vmin=0.0, vmax=float(self.weights.max()) or 1.0,
                       interpolation="nearest", aspect="auto")
        if n_k <= MAX_LABELLED_TOKENS:
            labels = [_label(t) for t in self.tokens]
            ax.set_xticks(range(n_k), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(n_q), labels[:n_q], fontsize=7)
        ax.set_xlabel("key (attended token)")
        ax.set_ylabel("query token")
        ax.set_title(self.title, fontsize=10)
        colorbar(fig, im, ax)
        return fig

    def save(self, path: str | Path) -> Path:
        """The heatmap as a PNG (written atomically)."""
        from attnlab.present.plots import save_png

        return save_png(self.figure(), path)

    def png(self) -> bytes:
        """The static heatmap as PNG bytes (what `_repr_png_` shows in frontends without HTML)."""
        from attnlab.present.plots import png_bytes

        return png_bytes(self.figure())

    def _repr_png_(self) -> bytes:
        return self.png()

    def _repr_html_(self) -> str:
        from attnlab.diagnose.pattern_view import render
        from attnlab.present import fmt_num

        s = self.summary()
        rows = "".join(f"<tr><td>{html.escape(name)}</td><td style='text-align:right'>{fmt_num(value, 4)}"
                       f"</td></tr>" for name, value in (
                           ("entropy, mean over queries (nats)", s["entropy_mean"]),
                           ("attention on token 0, mean over queries", s["first_token"]),
                           ("weight on the null sink (1 - row sum)", s["null_sink"])))
        return render(title=self.title, summary_rows=rows, tokens=self.tokens, weights=self.weights,
                      heads=self.heads, head=self.head, labelled=MAX_LABELLED_TOKENS)

    def __repr__(self) -> str:
        s = self.summary()
        return (f"AttentionPattern({self.title}, {len(self.tokens)} tokens, entropy {s['entropy_mean']:.3f}, "
                f"first-token {s['first_token']:.3f})")


def _label(token: str) -> str:
    """A token as a tick label: whitespace made visible, long tokens cut."""
    text = token.replace("\n", "\\n").replace("\t", "\\t")
    text = text if text.strip() else repr(text)
    return text if len(text) <= 12 else text[:11] + "…"


def attention_pattern(model: Any, text: str, layer: int, head: int | None = None, *,
                      max_tokens: int = 64) -> AttentionPattern:
    """The attention pattern of `head` (None: the mean over heads) in `layer` (negative counts from the
    last) of `model` (a name, hub id, path or LoadedModel) on the first `max_tokens` tokens of `text`."""
    from attnlab.diagnose.report import _load
    from attnlab.models.hooks import pattern_name

    lm = _load(model)
    if not isinstance(text, str) or not text.strip():
        raise DataError("text must be a non-empty string to look at")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigError(f"max_tokens must be a positive int, got {max_tokens!r}")
    n = lm.n_layers
    if not isinstance(layer, int) or not -n <= layer < n:
        raise ConfigError(f"layer {layer!r} out of range: {lm.name} has layers 0..{n - 1} (or -{n}..-1)")
    layer %= n
    if head is not None and (not isinstance(head, int) or not 0 <= head < lm.n_heads):
        raise ConfigError(f"head {head!r} out of range: {lm.name} has heads 0..{lm.n_heads - 1} per layer "
                          f"(or None for their mean)")
    ids = lm.encode(text)[:, :max_tokens]
    with torch.no_grad():
        _, cache = lm.run_with_cache(ids, names_filter=pattern_name(layer))
    heads = cache[pattern_name(layer)][0]  # (H, q, k)
    weights = heads.float().mean(0) if head is None else heads[head]  # (q, k)
    tokens = [lm.decode([int(i)]) for i in ids[0].tolist()]
    if not math.isfinite(float(weights.sum())):
        raise DataError(f"{lm.name} layer {layer} gives non-finite attention weights on this text; check the "
                        f"model's dtype (float16 overflows) or its weights")
    return AttentionPattern(weights, tokens, layer=layer, head=head, model=lm.name, heads=heads)


__all__ = ["AttentionPattern", "attention_pattern"]
