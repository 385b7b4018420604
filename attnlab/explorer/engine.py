"""The explorer's model side: one forward per request, with the attention override and steering applied.

`Explorer(loaded)` keeps one loaded model (see `attnlab.load_model`), computes the residual-stream
directions once at start (cached on disk), and answers `analyze(params)` with plain JSON-ready data: the
chosen head's attention pattern, the per-layer curves and the next-token distribution, next to the same
for the unmodified model (the baseline) when anything is overridden; `continue_text(params)` then gives
the short greedy continuation, decoded from the KV cache that forward left behind. The two are separate
requests because decoding is the slow part on a CPU (each new token reads every weight once): the page
updates its plots first and the continuation a moment later.

Speed: tokenizations and whole forward results are kept in small LRU caches, so moving the head or layer
slider (which does not change the forward when the override applies to all layers) costs no forward at
all, and the baseline is computed once per text. All model work is serialised by one lock, because the
steering hook is registered on the shared model.
"""

from __future__ import annotations

import copy
import inspect
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from attnlab.attention import (
    Normalizer,
    SinkWindow,
    Window,
    create_normalizer,
    learned_parameters,
    normalizer_keywords,
)
from attnlab.diagnose.pattern import MAX_LABELLED_TOKENS
from attnlab.explorer.directions import Directions, load_cached, model_key, pca_directions, save_cached
from attnlab.explorer.layer_metrics import METRIC_NAMES, layer_metrics
from attnlab.explorer.params import Limits, Params, RequestError, normalizer_menu
from attnlab.explorer.passages import CORPUS, DEFAULT_TEXT
from attnlab.models.hooks import attention_override, pattern_name
from attnlab.present.catalogue import catalogue_json


@dataclass
class _Forward:
    """What one forward leaves behind: patterns (L, H, T, T) float16, curves, top-k, the KV cache to
    continue from, and the greedy continuation once asked for."""

    patterns: Tensor
    metrics: dict[str, list[float | None]]
    top: list[dict[str, Any]]
    probs: Tensor
    kv: Any
    ms: float
    continuation: str | None = None


GRID_SIDE = 64  # largest thumbnail side, in cells; longer texts are block-averaged down to it


class Superseded(Exception):
    """A request dropped unanswered because a newer one from the page arrived while it waited."""


def _check(stale: Callable[[], bool] | None) -> None:
    # While a slider is dragged, requests queue behind the model lock; answering only the newest keeps
    # the page within one forward of the slider instead of replaying every intermediate position.
    if stale is not None and stale():
        raise Superseded("superseded by a newer request")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key: Any) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class Explorer:
    """A loaded model plus everything the page asks of it. `loaded` is an `attnlab.load_model` result."""

    def __init__(self, loaded: Any, *, name: str | None = None, limits: Limits | None = None,
                 n_directions: int = 4, corpus: tuple[str, ...] = CORPUS, default_text: str = DEFAULT_TEXT,
                 default_tokens: int = 128, progress: bool = False) -> None:
        self.loaded = loaded
        self.progress = progress  # report the one slow start-up step (the directions) on stderr
        self.name = name or getattr(loaded, "name", None) or "model"
        self.limits = limits or Limits()
        self.n_layers = int(loaded.n_layers)
        self.n_heads = int(loaded.n_heads)
        self.n_directions = n_directions
        self._lock = threading.Lock()
        self._ids = _LRU(32)
        self._forwards = _LRU(6)
        loaded.model.eval()
        self.default_text = self._fit(default_text, min(default_tokens, self.limits.max_tokens))
        self.directions = self._directions(corpus)

    # --- start-up -------------------------------------------------------------------------------------
    def _fit(self, text: str, max_tokens: int) -> str:
        """The longest prefix of whole lines of `text` that fits in max_tokens (at least one line)."""
        lines = text.splitlines()
        kept = lines[:1]
        for line in lines[1:]:
            if self._encode_raw("\n".join([*kept, line])).shape[-1] > max_tokens:
                break
            kept.append(line)
        return "\n".join(kept)

    def _directions(self, corpus: tuple[str, ...]) -> list[Directions]:
        key = model_key(self.name, self.loaded.model, corpus, self.n_directions)
        found = [load_cached(key, layer) for layer in range(self.n_layers)]
        if all(d is not None and d.components.shape[0] == self.n_directions for d in found):
            return found  # type: ignore[return-value]
        from attnlab.train.progress import counter

        bar = counter(len(corpus) + 1, "explore: steering directions (first start only, then cached)",
                      enabled=self.progress)
        rows: list[list[Tensor]] = [[] for _ in range(self.n_layers)]
        with torch.inference_mode():
            for text in corpus:
                ids = self._encode_raw(text)[:, : self.limits.max_tokens]
                wanted = [f"blocks.{layer}.hook_resid_post" for layer in range(self.n_layers)]
                _, cache = self.loaded.run_with_cache(ids, names_filter=wanted)
                for layer in range(self.n_layers):
                    rows[layer].append(cache[f"blocks.{layer}.hook_resid_post"][0, 1:].float())
                bar.update()
        out = []
        for layer in range(self.n_layers):
            d = pca_directions(torch.cat(rows[layer]), layer, self.n_directions)
            save_cached(key, d)
            out.append(d)
        bar.update()
        bar.close()
        return out

    def info(self) -> dict[str, Any]:
        """What the page needs to build its controls."""
        return {
            "model": self.name,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "d_model": int(self.loaded.d_model),
            "limits": self.limits.to_json(),
            "normalizers": normalizer_menu(),
            # Those the sink-logit slider drives (a learned `logits`, one sink logit per head).
            "sink_normalizers": [n for n in normalizer_menu() if _takes_sink(n)],
            # The curves in page order, each with its catalogue entry (label, unit, reading), so the page
            # names them with the report's words.
            "metrics": catalogue_json(METRIC_NAMES),
            "default_text": self.default_text,
            "default_layer": min(self.n_layers - 1, max(0, self.n_layers // 2)),
            # Up to this many tokens the heatmap's axes name the tokens (as the notebook's pattern does).
            "max_labelled_tokens": MAX_LABELLED_TOKENS,
            "n_directions": self.n_directions,
            "explained": [[round(float(e), 4) for e in d.explained] for d in self.directions],
        }

    # --- requests -------------------------------------------------------------------------------------
    def _encode_raw(self, text: str) -> Tensor:
        ids = self.loaded.encode(text)
        return ids if ids.dim() == 2 else ids.view(1, -1)

    def encode_any(self, text: str) -> Tensor:
        """Token ids (1, T) of text with no length limit (for scripts; requests go through `encode`)."""
        return self._encode_raw(text)

    def encode(self, text: str) -> Tensor:
        """Token ids (1, T) of text, cached; RequestError over the token limit."""
        ids = self._ids.get_or(text)
        if ids is None:
            ids = self._encode_raw(text)
            self._ids.put(text, ids)
        limit = self.limits.max_tokens
        if ids.shape[-1] > limit:
            raise RequestError(f"the text is {ids.shape[-1]} tokens long; the limit is {limit} tokens: "
                               f"shorten the text")
        if ids.shape[-1] == 0:
            raise RequestError("the text encodes to no tokens: type some text to analyse")
        return ids

    def analyze(self, params: Params, stale: Callable[[], bool] | None = None) -> dict[str, Any]:
        """One page update: see the module docstring. Raises RequestError for text over the limits, and
        Superseded if `stale()` is true once the model is free (a newer request is waiting)."""
        t0 = time.perf_counter()
        ids = self.encode(params.text)
        with self._lock:
            _check(stale)
            fwd, cached = self._forward(params, ids)
            base = None
            if params.overriding or params.steering:
                base, _ = self._forward(params.baseline(), ids)
        pattern = fwd.patterns[params.layer, params.head].float()
        tokens = [self._token_text(int(i)) for i in ids[0]]
        top = fwd.top
        if base is not None:
            top = [dict(t, baseline_prob=round(float(base.probs[t["id"]]), 5)) for t in top]
        return {
            "model": self.name,
            "tokens": tokens,
            "n_tokens": len(tokens),
            "layer": params.layer,
            "head": params.head,
            "pattern": [[round(float(v), 5) for v in row] for row in pattern],
            "metrics": fwd.metrics,
            "baseline_metrics": base.metrics if base is not None else None,
            "top": top,
            "baseline_top": base.top if base is not None else None,
            "steer_layer": params.steer_layer,
            "explained": [round(float(e), 4) for e in self.directions[params.steer_layer].explained],
            "grid": self._grid(fwd.patterns, params),
            "cached": cached,
            "forward_ms": round(fwd.ms, 1),
            "total_ms": round(1000 * (time.perf_counter() - t0), 1),
        }

    def _grid(self, patterns: Tensor, p: Params) -> dict[str, Any] | None:
        """The small multiples: every head of the chosen layer or every layer of the chosen head, each
        pattern block-averaged to at most GRID_SIDE x GRID_SIDE (a thumbnail needs no more, and the answer
        stays small: 30 layers x 64 x 64 numbers)."""
        if p.grid == "none":
            return None
        maps = patterns[p.layer] if p.grid == "heads" else patterns[:, p.head]  # (n, T, T)
        side = min(GRID_SIDE, maps.shape[-1])
        pooled = torch.nn.functional.adaptive_avg_pool2d(maps.float(), side)
        return {"kind": p.grid, "side": side, "maps": [[[round(float(v), 4) for v in row] for row in m]
                                                      for m in pooled]}

    def continue_text(self, params: Params, stale: Callable[[], bool] | None = None) -> dict[str, Any]:
        """The greedy continuation under the request's override and steering, and the baseline's."""
        t0 = time.perf_counter()
        ids = self.encode(params.text)
        with self._lock:
            _check(stale)
            fwd, _ = self._forward(params, ids)
            text = self._continuation(fwd, params, ids)
            base = None
            if params.overriding or params.steering:
                b = params.baseline()
                base = self._continuation(self._forward(b, ids)[0], b, ids)
        return {"continuation": text, "baseline_continuation": base,
                "total_ms": round(1000 * (time.perf_counter() - t0), 1)}

    def _token_text(self, token_id: int) -> str:
        return self.loaded.decode([token_id])

    def _forward_key(self, p: Params) -> tuple:
        # Layer and head pick what to show, not what to compute, unless the override is for one layer.
        layer = p.layer if (p.scope == "layer" and p.overriding) else None
        steer = (p.steer_layer, p.alphas) if p.steering else None
        sink = p.sink_logit if _takes_sink(p.normalizer) else None
        sinks = p.sinks if p.window > 0 else None
        return (p.text, p.normalizer, sink, p.temperature, p.window, sinks, layer, steer)

    def _forward(self, p: Params, ids: Tensor) -> tuple[_Forward, bool]:
        key = self._forward_key(p)
        hit = self._forwards.get_or(key)
        if hit is not None:
            return hit, True
        t0 = time.perf_counter()
        # One forward gives everything: residual streams and every layer's pattern (LoadedModel.capture, the
        # one capture path; at <= 256 tokens the eager weights cost ~15% over the fused kernel) and the KV
        # cache to continue from.
        with torch.inference_mode(), self._override(p), self._steer(p):
            # Entered after the steering hook, so the steered block's stream includes its delta.
            with self.loaded.capture() as cache:
                logits, kv = self._prompt_forward(ids)
        patterns = torch.stack([cache[pattern_name(i)][0] for i in range(self.n_layers)])
        metrics: dict[str, list[float | None]] = {m: [] for m in METRIC_NAMES}
        for i in range(self.n_layers):
            values = layer_metrics(cache[f"blocks.{i}.hook_resid_post"][0], patterns[i])
            for m in METRIC_NAMES:
                metrics[m].append(_finite(round(values[m], 6)))
        probs = torch.softmax(logits[0, -1].float(), dim=-1)
        top_p, top_i = probs.topk(min(self.limits.top_k, probs.shape[0]))
        top = [{"id": int(i), "token": self._token_text(int(i)), "prob": round(float(v), 5)}
               for v, i in zip(top_p, top_i)]
        fwd = _Forward(patterns=patterns.to(torch.float16), metrics=metrics, top=top, probs=probs, kv=kv,
                       ms=1000 * (time.perf_counter() - t0))
        self._forwards.put(key, fwd)
        return fwd, False

    def _prompt_forward(self, ids: Tensor) -> tuple[Tensor, Any]:
        """Logits (1, T, V) and, for Hugging Face models, the KV cache (None for others)."""
        if getattr(self.loaded, "kind", "hf") != "hf":
            return self.loaded.logits(ids), None
        out = self.loaded.model(input_ids=ids, use_cache=True)
        return out.logits, getattr(out, "cache", None) or getattr(out, "past_key_values", None)

    def _continuation(self, fwd: _Forward, p: Params, ids: Tensor) -> str:
        if fwd.continuation is None:
            with torch.inference_mode(), self._override(p), self._steer(p):
                fwd.continuation = self._greedy(ids, int(fwd.probs.argmax()), fwd.kv)
        return fwd.continuation

    def _greedy(self, ids: Tensor, first: int, kv: Any) -> str:
        """A short greedy continuation: `first`, then n - 1 tokens decoded one by one from a copy of the
        prompt's KV cache (or, without one, by recomputing the whole sequence: short prompts only)."""
        n = self.limits.continuation_tokens
        max_ctx = getattr(self.loaded, "max_context", None)
        if max_ctx:
            n = max(0, min(n, int(max_ctx) - ids.shape[-1]))
        if n == 0:
            return ""
        out_ids = [first]
        if kv is None:
            seq = ids
            for _ in range(n - 1):
                seq = torch.cat([seq, torch.tensor([[out_ids[-1]]], device=ids.device)], dim=1)
                out_ids.append(int(self.loaded.logits(seq)[0, -1].argmax()))
            return self.loaded.decode(out_ids)
        hf = self.loaded.model
        # transformers >= 5.2x names the KV cache `cache`; earlier versions `past_key_values`.
        arg = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
        past = copy.deepcopy(kv)  # the cached forward keeps its own copy for the next continuation
        for _ in range(n - 1):
            step = torch.tensor([[out_ids[-1]]], device=ids.device)
            out = hf(input_ids=step, use_cache=True, **{arg: past})
            past = getattr(out, "cache", None) or out.past_key_values
            out_ids.append(int(out.logits[0, -1].argmax()))
        return self.loaded.decode(out_ids)

    def _override(self, p: Params) -> Any:
        if not p.overriding:
            return nullcontext()
        normalizer = self._normalizer(p)
        span = None
        if p.window > 0:
            span = SinkWindow(p.sinks, p.window) if p.sinks > 0 else Window(p.window)
        layers = [p.layer] if p.scope == "layer" else None
        return attention_override(normalizer=normalizer, span=span, temperature=p.temperature, layers=layers)

    def _normalizer(self, p: Params) -> Normalizer:
        """The request's normalizer from the registry: learned tensors at their initial values, except a
        sink logit, which the slider sets (one value for every head)."""
        params = learned_parameters(p.normalizer, self.n_heads)
        if _takes_sink(p.normalizer):
            params["logits"] = torch.tensor(p.sink_logit)
        return create_normalizer(p.normalizer, **params)

    @contextmanager
    def _steer(self, p: Params) -> Iterator[None]:
        """Add sum_k alpha_k * typical_norm * direction_k to block `steer_layer`'s output (forward hook)."""
        if not p.steering:
            yield
            return
        delta = self.directions[p.steer_layer].delta(p.alphas)

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (output[0] + delta.to(output[0]), *output[1:])
            return output + delta.to(output)

        handle = self.loaded.blocks()[p.steer_layer].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()


def _takes_sink(name: str) -> bool:
    return "logits" in normalizer_keywords(name)


def default_params(explorer: Explorer, **changes: Any) -> Params:
    """The page's starting request, for scripts and tests."""
    p = Params(text=explorer.default_text, layer=explorer.info()["default_layer"],
               steer_layer=explorer.info()["default_layer"], alphas=(0.0,) * explorer.n_directions)
    return replace(p, **changes)
