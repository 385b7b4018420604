"""Re-positioning keys that were already rotated by RoPE (Su et al. 2021).

RoPE rotates each pair of channels (i, i + D/2) of a key at position p by the angle p * w_i (the
"rotate_half" layout Hugging Face uses):

    R(p) k = k * cos(p w) + rotate_half(k) * sin(p w),       rotate_half([x1, x2]) = [-x2, x1]

and rotations compose, R(a) R(b) = R(a + b). So a key cached at position p moves to position p + d by
applying R(d): no need to keep the un-rotated key. Scaled RoPE variants whose frequencies `w` do not depend
on the position ("default", "linear", "llama3", "yarn", "longrope" within its original context, "dynamic"
while positions stay inside the trained context) only change `w` and a constant magnitude factor
(yarn's attention scaling), which R(d) leaves alone; we read `w` from the model's own rotary module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError

# Rope types whose inv_freq is fixed once positions stay below the trained context (ours always do).
SUPPORTED_ROPE = ("default", "linear", "llama3", "yarn", "dynamic")


@dataclass
class Rope:
    """The model's RoPE frequencies (D/2,) in float64, for re-rotation by a position shift."""

    inv_freq: Tensor
    rope_type: str

    def __post_init__(self) -> None:
        self._cache: dict[tuple[int, torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def _cos_sin(self, shift: Tensor | int, device: torch.device, dtype: torch.dtype
                 ) -> tuple[Tensor, Tensor]:
        """cos and sin of shift * w, each (..., D/2); a scalar shift's pair is cached (a decode step rotates
        every layer's window by the same shift)."""
        key = (shift, device, dtype) if isinstance(shift, int) else None
        if key is not None and key in self._cache:
            return self._cache[key]
        shift_t = torch.as_tensor(shift, dtype=torch.float64, device=device)
        angles = shift_t[..., None] * self.inv_freq.to(device)
        pair = angles.cos().to(dtype), angles.sin().to(dtype)
        if key is not None:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = pair
        return pair

    def rotate(self, x: Tensor, shift: Tensor | int, out: Tensor | None = None) -> Tensor:
        """R(shift) x for x (..., L, D); `shift` a scalar or a (L,) / broadcastable tensor of shifts.
        Written into `out` when given (x's shape): three passes over x and no temporaries."""
        cos, sin = self._cos_sin(shift, x.device, x.dtype)
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        out = torch.empty_like(x) if out is None else out
        o1, o2 = out[..., :half], out[..., half:]
        torch.mul(x1, cos, out=o1)
        o1.addcmul_(x2, sin, value=-1.0)  # [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]
        torch.mul(x2, cos, out=o2)
        o2.addcmul_(x1, sin)
        return out


def find_rotary(model: nn.Module) -> nn.Module | None:
    """The rotary-embedding module of a HF causal LM (model.model.rotary_emb in Llama/Mistral/Qwen2)."""
    for name, module in model.named_modules():
        if name.endswith("rotary_emb") and hasattr(module, "inv_freq"):
            return module
    return None


def rope_of(model: nn.Module) -> Rope:
    """RoPE frequencies of a HF model, or a ConfigError naming why its keys cannot be re-positioned."""
    rot = find_rotary(model)
    if rot is None:
        raise ConfigError(f"{type(model).__name__} has no rotary embedding module (rotary_emb with "
                          f"inv_freq); attnlab.stream re-positions RoPE keys and supports RoPE causal LMs"
                          f" such as Llama, Mistral and Qwen2")
    rope_type = str(getattr(rot, "rope_type", "default"))
    if rope_type not in SUPPORTED_ROPE:
        raise ConfigError(f"RoPE type {rope_type!r} is not supported for streaming "
                          f"(its frequencies depend on "
                          f"the position); supported: {', '.join(SUPPORTED_ROPE)}")
    inv = getattr(rot, "original_inv_freq", None) if rope_type == "dynamic" else None
    inv = rot.inv_freq if inv is None else inv
    return Rope(inv_freq=inv.detach().to(torch.float64).cpu(), rope_type=rope_type)
