"""Residual-stream directions to steer along: the top principal components of one layer's residual stream.

Over a small corpus (a few Shakespeare passages) we collect X (N, d), the residual stream after block
`layer` at every token but the first (the first token's residual is often a massive-norm outlier that would
take the first component for itself), centre it and take the right singular vectors: X - mean = U S V^T,
direction k = V[:, k], explained variance S_k^2 / sum S^2. A slider then adds
alpha * typical_norm * V[:, k] to that layer's output, typical_norm being the median token norm, so alpha
reads as "a fraction of a typical residual vector" at every layer.

Results are cached under `attnlab.io.cache_dir()/explorer/<model key>/layer<L>.pt`, keyed by model and
layer (the model key hashes the model's name, shape, a fingerprint of its weights and the corpus).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from attnlab.io import atomic_write_bytes, cache_dir


@dataclass(frozen=True)
class Directions:
    """Top principal directions of one layer: components (k, d) unit rows, explained (k,), typical_norm."""

    layer: int
    components: Tensor
    explained: Tensor
    typical_norm: float

    def delta(self, alphas: tuple[float, ...]) -> Tensor:
        """sum_k alpha_k * typical_norm * component_k, shape (d,)."""
        a = torch.tensor(alphas[: self.components.shape[0]], dtype=self.components.dtype)
        return self.typical_norm * (a @ self.components[: a.shape[0]])


def model_key(name: str, model: torch.nn.Module, corpus: tuple[str, ...], k: int) -> str:
    """A short stable key: name, every parameter's shape, a weight fingerprint, the corpus and k."""
    h = hashlib.sha256()
    h.update(name.encode())
    h.update(str(k).encode())
    for pname, p in model.named_parameters():
        h.update(f"{pname}{tuple(p.shape)}".encode())
    first = next(model.parameters(), None)
    if first is not None:
        h.update(first.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    for text in corpus:
        h.update(text.encode())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-48:]
    return f"{safe}-{h.hexdigest()[:16]}"


def pca_directions(resid: Tensor, layer: int, k: int) -> Directions:
    """PCA of rows of resid (N, d) in float64; component signs fixed so each has a positive largest entry."""
    x = resid.double()
    centred = x - x.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(k, vh.shape[0])
    comps = vh[:k]
    sign = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
    var = s**2
    explained = var[:k] / var.sum().clamp_min(1e-30)
    typical = float(x.norm(dim=-1).median())
    return Directions(layer=layer, components=comps.float(), explained=explained.float(),
                      typical_norm=typical)


def _path(key: str, layer: int) -> Path:
    return cache_dir() / "explorer" / key / f"layer{layer:03d}.pt"


def load_cached(key: str, layer: int) -> Directions | None:
    path = _path(key, layer)
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return Directions(layer=int(data["layer"]), components=data["components"],
                          explained=data["explained"], typical_norm=float(data["typical_norm"]))
    except (OSError, RuntimeError, KeyError, ValueError):
        return None  # a stale or damaged cache entry is recomputed, never trusted


def save_cached(key: str, d: Directions) -> Path:
    buf = io.BytesIO()
    torch.save({"layer": d.layer, "components": d.components, "explained": d.explained,
                "typical_norm": d.typical_norm}, buf)
    return atomic_write_bytes(_path(key, d.layer), buf.getvalue())
