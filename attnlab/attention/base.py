"""The `Normalizer` base class: how scores become weights, and what a variant must provide.

A normalizer has two methods that must agree:
- `weights(scores, allowed)`: the reference, plain eager code on the full (..., Lq, Lk) score matrix;
  disallowed keys get weight 0, and a query that may see no key gets an all-zero row. Required.
- `attend(problem)`: the fast path on the stock fused kernel (kernels.py), never materialising Lq x Lk.
  Optional: without it, `attend` runs `weights` on the problem's scores (the slow path, O(Lq x Lk) memory
  per kernel call) and warns once per class.

Learned per-head parameters (a sink logit per head, ...) are the constructor's keyword arguments; the
class says how to create them with `learned_parameters(heads)`, so a model can hold them as its own
`nn.Parameter`s and build the normalizer from them on each forward (registry.create_normalizer).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from attnlab.attention.kernels import Problem

_warned: set[type] = set()


class Normalizer:
    name: str = "normalizer"
    # True when `attend` handles `Problem.band` (a window run by band.py's compiled kernel). A subclass that
    # defines its own `attend` starts at False again (see __init_subclass__): the flag is never inherited
    # by code that did not declare it.
    supports_band: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "attend" in cls.__dict__ and "supports_band" not in cls.__dict__:
            cls.supports_band = False

    @classmethod
    def learned_parameters(cls, heads: int) -> dict[str, Tensor]:
        """Initial values of the learned tensors of one layer with `heads` query heads, keyed by the
        constructor keyword that takes them. A model wraps each in an `nn.Parameter`. Default: none."""
        return {}

    def weights(self, scores: Tensor, allowed: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement weights(scores, allowed)")

    def attend(self, p: Problem) -> Tensor:
        """The slow path for a normalizer with only `weights`: that reference code on this kernel call's
        scores. Exact, differentiable by autograd, O(Lq x Lk) memory."""
        cls = type(self)
        if cls not in _warned:
            _warned.add(cls)
            warnings.warn(f"normalizer {cls.__name__} implements only weights(); attention runs its "
                          f"reference code on the full score matrix (the slow path). Implement attend() "
                          f"for a fused fast path.", stacklevel=2)
        return reference_attend(self, p)

    def check_heads(self, heads: int) -> None:
        """Raise ValueError if per-head parameters do not match `heads` query heads."""

    @classmethod
    def has_fast_path(cls) -> bool:
        return cls.attend is not Normalizer.attend

    def __repr__(self) -> str:
        return self.name


def reference_attend(normalizer: Normalizer, p: Problem) -> Tensor:
    """`normalizer.weights` on one kernel call's scores: (N, H, Lq, Dv). Half precision is computed in
    float32, as on the reference backend."""
    compute = torch.float32 if p.q.dtype in (torch.float16, torch.bfloat16) else p.q.dtype
    k, v = p.kv()
    q, k, v = p.q.to(compute), k.to(compute), v.to(compute)
    scores = (q * p.scale) @ k.transpose(-1, -2)  # (N, H, Lq, Lk)
    weights = normalizer.weights(scores, p.allowed())
    return (weights @ v).to(p.q.dtype)


__all__ = ["Normalizer", "reference_attend"]
