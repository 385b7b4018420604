"""`GPTConfig`: every architecture switch of attnlab's small GPT, validated on construction.

Each switch is one field with the paper it comes from (docs/training.md gives the formulas):
- normalizer: any name in the normalizer registry (`attnlab.normalizer_names()`, or "module:Attr"):
  softmax | softmax1 (Miller 2023) | sinks (learned per-head sink logit, gpt-oss; Xiao et al. 2024) |
  clipped (Bondarenko et al. 2023, clip_gamma / clip_zeta) | adaptive (Velickovic et al. 2024) | ssmax
  (Nakanishi 2025, learned per-head s) | softpick (Zuhri et al. 2025) | a user's registered normalizer.
  Its learned per-layer tensors are what `learned_parameters(name, n_heads, context=context)` gives.
- span: any name `attnlab.attention.resolve_span` accepts ("causal", "window(64)", "sinkwindow(4,60)", ...)
- norm / norm_position: RMSNorm (Zhang & Sennrich 2019), LayerNorm (Ba et al. 2016), none; pre or post
  (Xiong et al. 2020)
- skip, mlp: Dong et al. 2021's pure-attention ablations
- gated_attention: Bondarenko et al. 2023
- depth_scaled_residual: each branch times 1/sqrt(2 * n_layers) (Noci et al. 2022)
- init: normal | orthogonal (Saxe et al. 2014); sigma_reparam: Zhai et al. 2023
- score: dot | l2 (Kim et al. 2021, tied query/key weights)
- aux_head_diversity (Li et al. 2018), aux_logdet (coding rate, Yu et al. 2020): anti-collapse losses
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from attnlab.attention.registry import NORMALIZER_NAMES as NORMALIZERS  # a live view of the registry
from attnlab.attention.registry import create_normalizer, learned_parameters, normalizer_keywords
from attnlab.errors import ConfigError

# Config fields given to the normalizer's factory as these keywords when it takes them: Clipped(gamma, zeta).
NORMALIZER_FIELDS = {"gamma": "clip_gamma", "zeta": "clip_zeta"}
NORMS = ("rmsnorm", "layernorm", "none")
NORM_POSITIONS = ("pre", "post")
INITS = ("normal", "orthogonal")
SCORES = ("dot", "l2")
# Keys config.json may carry besides the fields (written by GPT.save, ignored on load).
META_KEYS = ("model_type", "attnlab_version")
MODEL_TYPE = "attnlab-gpt"


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"GPTConfig.{name}={value!r} is not valid; choose one of: {', '.join(valid)}")


def check_size(name: str, value: Any) -> None:
    """GPTConfig's rule for a size field (vocab_size, n_layers, ...): a positive integer, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")


@dataclass
class GPTConfig:
    vocab_size: int = 256
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads
    context: int = 256
    mlp_ratio: int = 4
    rope_theta: float = 10000.0
    dropout: float = 0.0
    normalizer: str = "softmax"
    clip_gamma: float = -0.03
    clip_zeta: float = 1.0
    span: str = "causal"
    norm: str = "rmsnorm"
    norm_position: str = "pre"
    skip: bool = True
    mlp: bool = True
    gated_attention: bool = False
    depth_scaled_residual: bool = False
    init: str = "normal"
    sigma_reparam: bool = False
    score: str = "dot"
    aux_head_diversity: float = 0.0
    aux_logdet: float = 0.0
    tie_embeddings: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "context", "mlp_ratio"):
            check_size(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ConfigError(f"GPTConfig: d_model={self.d_model} is not divisible by "
                              f"n_heads={self.n_heads}; pick n_heads among the divisors of d_model")
        if (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"GPTConfig: head dim d_model/n_heads={self.d_model // self.n_heads} must be "
                              f"even for rotary embeddings; change d_model or n_heads")
        if self.n_kv_heads is not None:
            kv = self.n_kv_heads
            if isinstance(kv, bool) or not isinstance(kv, int) or kv < 1 or self.n_heads % kv:
                raise ConfigError(f"GPTConfig.n_kv_heads={kv!r} must divide n_heads={self.n_heads} "
                                  f"(or be None for one key/value head per query head)")
        self._check_normalizer()
        _choice("norm", self.norm, NORMS)
        _choice("norm_position", self.norm_position, NORM_POSITIONS)
        _choice("init", self.init, INITS)
        _choice("score", self.score, SCORES)
        if self.score == "l2" and self.kv_heads != self.n_heads:
            raise ConfigError("GPTConfig: score='l2' ties the query and key weights, so it needs "
                              "n_kv_heads=None (or equal to n_heads)")
        from attnlab.attention import resolve_span

        try:
            resolve_span(self.span)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"GPTConfig.span: {exc}") from None
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("aux_head_diversity", "aux_logdet"):
            if getattr(self, name) < 0:
                raise ConfigError(f"GPTConfig.{name} must be >= 0 (a loss weight), got {getattr(self, name)}")
        if self.rope_theta <= 0:
            raise ConfigError(f"GPTConfig.rope_theta must be > 0, got {self.rope_theta}")

    def _check_normalizer(self) -> None:
        """The name is registered (or importable as 'module:Attr') and the normalizer builds from this
        config's settings and initial learned parameters, so a bad clip_gamma fails here, not in training."""
        try:
            options = self.normalizer_options()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"GPTConfig.normalizer={self.normalizer!r} is not valid: {exc}") from None
        try:
            create_normalizer(self.normalizer, **options,
                              **learned_parameters(self.normalizer, self.n_heads, context=self.context))
        except (TypeError, ValueError) as exc:
            given = ", ".join(f"{NORMALIZER_FIELDS[k]}={v}" for k, v in options.items())
            raise ConfigError(f"GPTConfig: the {self.normalizer!r} normalizer rejects this config"
                              f"{f' ({given})' if given else ''}: {exc}") from None

    def normalizer_options(self) -> dict[str, Any]:
        """The settings (not learned) this config hands the normalizer's factory: clip_gamma and clip_zeta
        as gamma= and zeta= to a factory that takes them."""
        takes = normalizer_keywords(self.normalizer)
        return {kw: getattr(self, name) for kw, name in NORMALIZER_FIELDS.items() if kw in takes}

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> GPTConfig:
        """Build from a dict; unknown keys raise ConfigError naming them (meta keys are ignored)."""
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k not in META_KEYS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown GPTConfig field(s) {', '.join(unknown)}; valid fields: "
                              f"{', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str) -> GPTConfig:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); re-save the model with GPT.save") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object of GPTConfig fields")
        return cls.from_dict(data, source=str(path))


__all__ = ["GPTConfig", "INITS", "MODEL_TYPE", "NORMALIZERS", "NORMALIZER_FIELDS", "NORMS", "NORM_POSITIONS",
           "SCORES", "check_size"]
