"""attnlab's small GPT: decoder-only, RoPE, pluggable attention normalizer and span, and the architecture
switches the studies need (see GPTConfig in gpt_config.py; formulas and papers in docs/training.md).

Read top to bottom: Attention -> MLP -> Block -> GPT. Every attention call goes through
`attnlab.models.hooks.attend`, so `record_attention()` captures `blocks.{i}.attn.pattern` and
`attention_override()` swaps the normalizer or span at inference, as for Hugging Face models.

Shapes: B batch, T new tokens, L keys (cached + new), H query heads, Hkv key/value heads, D head dim,
d = d_model, V vocab.

Block (pre-norm):   x = s*x + a * f(norm(x))      Block (post-norm):  x = norm(s*x + a * f(x))
with s = 1 (skip) or 0 (no skip), a = 1/sqrt(2 n_layers) with depth_scaled_residual else 1, f attention
or MLP. Gated attention (Bondarenko et al. 2023): head h's output times sigmoid(x_h . w_h + b_h), x_h
head h's slice of the attention input.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import Normalizer, create_normalizer, learned_parameters, resolve_span
from attnlab.errors import ConfigError, ModelNotFoundError
from attnlab.models.gpt_config import MODEL_TYPE, GPTConfig
from attnlab.models.gpt_parts import (
    KVCache,
    SigmaReparamLinear,
    apply_rope,
    head_diversity_penalty,
    l2_augment,
    logdet_penalty,
    make_norm,
    rope_angles,
)
from attnlab.models.hooks import attend

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# A normalizer's learned tensor `key` is the attention module's parameter `normalizer_{key}`. Checkpoints
# written before the normalizer registry named two of them otherwise; they load under the new names.
LEARNED_PREFIX = "normalizer_"
LEGACY_KEYS = {"sink_logits": "normalizer_logits", "ssmax_s": "normalizer_s"}


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.l2 = cfg.score == "l2"
        linear = SigmaReparamLinear if cfg.sigma_reparam else nn.Linear
        d = cfg.d_model
        self.q_proj = linear(d, self.n_heads * self.head_dim, bias=False)
        # L2 attention ties keys to queries (Kim et al. 2021): one projection serves both.
        self.k_proj = None if self.l2 else linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = linear(self.n_heads * self.head_dim, d, bias=False)
        if cfg.gated_attention:
            self.gate_weight = nn.Parameter(torch.zeros(self.n_heads, self.head_dim))
            self.gate_bias = nn.Parameter(torch.zeros(self.n_heads))
        self.gated = cfg.gated_attention
        self.span = resolve_span(cfg.span)
        # The normalizer's learned tensors (a sink logit per head, ...) are this layer's parameters; a
        # normalizer without any is built once, one with them on every forward (gradients reach them).
        self.normalizer_name = cfg.normalizer
        self._normalizer_options = cfg.normalizer_options()
        learned = learned_parameters(cfg.normalizer, self.n_heads, context=cfg.context)
        self._learned = tuple(learned)
        for key, init in learned.items():
            self.register_parameter(LEARNED_PREFIX + key, nn.Parameter(init.detach().clone()))
        self._fixed: Normalizer | None = None if learned else create_normalizer(cfg.normalizer,
                                                                                **self._normalizer_options)
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)
        self.keep_heads = False  # set by GPT when the head-diversity loss needs each head's output
        self.head_outputs: Tensor | None = None

    def normalizer(self) -> Normalizer:
        if self._fixed is not None:
            return self._fixed
        learned = {key: getattr(self, LEARNED_PREFIX + key) for key in self._learned}
        return create_normalizer(self.normalizer_name, **self._normalizer_options, **learned)

    def forward(self, x: Tensor, rope_q: tuple[Tensor, Tensor], rope_k: tuple[Tensor, Tensor],
                cache: KVCache | None = None) -> Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        if self.l2:
            k = q
        else:
            k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        if cache is not None:
            k, v = cache.extend(self.layer_idx, k, v)  # (B, Hkv, L, D), keys still without RoPE
        q = apply_rope(q, *rope_q)
        k = apply_rope(k, *rope_k)
        scale = 1.0 / math.sqrt(D)  # of the un-augmented head dim, also for L2 scores
        if self.l2:
            q, k, v = l2_augment(q, k, v)  # (B, H, T, D+2), (B, Hkv, L, D+2), (B, Hkv, L, D+2)
        # "auto" on every device: the fused sink identity has a backward on CPU and CUDA (checked against
        # the float64 reference in tests/test_attention_cuda.py) and falls back to exact matrix products
        # elsewhere, so training never needs the O(T x L) reference path.
        y = attend(self.layer_idx, q, k, v, normalizer=self.normalizer(), span=self.span, scale=scale,
                   backend="auto")
        y = y[..., :D]  # (B, H, T, D); drops the L2 padding, a no-op otherwise
        if self.gated:
            x_heads = x.view(B, T, H, D)  # head h's slice of the input
            logits = (x_heads * self.gate_weight).sum(-1) + self.gate_bias  # (B, T, H)
            y = y * torch.sigmoid(logits).transpose(1, 2).unsqueeze(-1)  # (B, H, T, 1) gate
        self.head_outputs = y if self.keep_heads else None
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        return self.o_proj(y)


def _rename_legacy_keys(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *_: Any) -> None:
    for old, new in LEGACY_KEYS.items():
        if prefix + old in state_dict and hasattr(module, new):
            state_dict[prefix + new] = state_dict.pop(prefix + old)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.skip = cfg.skip
        self.alpha = 1.0 / math.sqrt(2 * cfg.n_layers) if cfg.depth_scaled_residual else 1.0
        self.norm1 = make_norm(cfg.norm, cfg.d_model)
        self.attn = Attention(cfg, layer_idx)
        self.norm2 = make_norm(cfg.norm, cfg.d_model) if cfg.mlp else None
        self.mlp = MLP(cfg) if cfg.mlp else None
        self.drop = nn.Dropout(cfg.dropout)

    def _residual(self, x: Tensor, branch: Tensor, norm: nn.Module) -> Tensor:
        out = (x if self.skip else 0.0) + self.alpha * self.drop(branch)
        return out if self.pre else norm(out)

    def forward(self, x: Tensor, rope_q: tuple[Tensor, Tensor], rope_k: tuple[Tensor, Tensor],
                cache: KVCache | None = None) -> Tensor:
        h = self.norm1(x) if self.pre else x
        x = self._residual(x, self.attn(h, rope_q, rope_k, cache), self.norm1)
        if self.mlp is not None:
            h = self.norm2(x) if self.pre else x
            x = self._residual(x, self.mlp(h), self.norm2)
        return x


class GPT(nn.Module):
    """Decoder-only transformer. `forward(idx, targets)` -> (logits (B, T, V), loss or None)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        # The model is a pure function of its config: build and initialise under config.seed without
        # touching the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.wte = nn.Embedding(config.vocab_size, config.d_model)
            self.drop = nn.Dropout(config.dropout)
            self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layers)])
            # Post-norm blocks already end in a norm; pre-norm needs one before the head.
            pre = config.norm_position == "pre"
            self.norm_f = make_norm(config.norm, config.d_model) if pre else nn.Identity()
            self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size,
                                                                        bias=False)
            self._init_weights()
        for block in self.blocks:
            block.attn.keep_heads = config.aux_head_diversity > 0
        self.last_losses: dict[str, float] = {}

    @torch.no_grad()
    def _init_weights(self) -> None:
        cfg = self.config
        residual_std = 0.02 / math.sqrt(2 * cfg.n_layers)  # GPT-2: output projections scaled by depth
        nn.init.normal_(self.wte.weight, std=0.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                if cfg.init == "orthogonal":
                    nn.init.orthogonal_(module.weight)
                else:
                    std = residual_std if name.endswith(("o_proj", "mlp.proj")) else 0.02
                    nn.init.normal_(module.weight, std=std)
            if isinstance(module, Attention) and module.gated:
                nn.init.normal_(module.gate_weight, std=0.02)  # bias 0: every gate starts near 1/2
        for module in self.modules():
            if isinstance(module, SigmaReparamLinear):
                module.reset_sigma()

    # ------------------------------------------------------------ forward
    def embed(self, idx: Tensor) -> Tensor:
        """Token embeddings (B, T, d) of ids (B, T): the input `forward_embeds` takes."""
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"GPT: token ids must be an integer tensor of shape (batch, seq), got "
                             f"{idx.dtype} {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(f"GPT: token ids must lie in [0, {self.config.vocab_size}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]; use the model's own tokenizer")
        return self.wte(idx)

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, cache: KVCache | None = None,
                positions: Tensor | None = None, return_hidden: bool = False) -> tuple[Any, ...]:
        """idx (B, T) token ids. Returns (logits (B, T, V), loss) where loss is the mean next-token
        cross-entropy plus the weighted auxiliary losses (None without targets); with return_hidden,
        also the residual stream after every block (a list of n_layers (B, T, d) tensors).
        With `cache` (a KVCache, updated in place), idx holds only the new tokens."""
        return self.forward_embeds(self.embed(idx), targets, cache=cache, positions=positions,
                                   return_hidden=return_hidden)

    def forward_embeds(self, x: Tensor, targets: Tensor | None = None, *, cache: KVCache | None = None,
                       positions: Tensor | None = None, return_hidden: bool = False) -> tuple[Any, ...]:
        """Like forward, from input embeddings x (B, T, d) (differentiable, for Jacobian diagnostics).
        positions: (T,) RoPE positions of the new tokens; default continues after the cache (or 0..T-1)."""
        B, T, _ = x.shape
        cfg = self.config
        if positions is None:
            start = cache.next_position() if cache is not None else 0
            positions = torch.arange(start, start + T, device=x.device)
        elif positions.shape != (T,):
            raise ValueError(f"GPT: positions must have shape ({T},), got {tuple(positions.shape)}")
        positions = positions.to(device=x.device, dtype=torch.long)
        rope_q = rope_angles(positions, cfg.head_dim, cfg.rope_theta)  # (T, D) each
        if cache is not None:
            if len(cache.keys) != cfg.n_layers:
                raise ValueError(f"GPT: the cache has {len(cache.keys)} layers, the model {cfg.n_layers}; "
                                 f"make one with KVCache.empty(model.config.n_layers)")
            past = cache.positions if cache.positions is not None else positions[:0]
            key_positions = torch.cat([past.to(x.device), positions])  # (L,)
            rope_k = rope_angles(key_positions, cfg.head_dim, cfg.rope_theta)  # (L, D) each
        else:
            rope_k = rope_q
        x = self.drop(x)
        hidden: list[Tensor] = []
        for block in self.blocks:
            x = block(x, rope_q, rope_k, cache)  # (B, T, d)
            hidden.append(x)
        if cache is not None:
            cache.positions = key_positions
        logits = self._head(self.norm_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = self._loss(logits, targets, hidden)
        return (logits, loss, hidden) if return_hidden else (logits, loss)

    def _head(self, x: Tensor) -> Tensor:
        return F.linear(x, self.wte.weight) if self.lm_head is None else self.lm_head(x)

    def _loss(self, logits: Tensor, targets: Tensor, hidden: list[Tensor]) -> Tensor:
        cfg = self.config
        flat = logits.reshape(-1, logits.shape[-1]).float()  # (B*T, V)
        ce = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100)
        loss = ce
        parts = {"ce": ce}
        if cfg.aux_head_diversity > 0:
            penalty = torch.stack([head_diversity_penalty(b.attn.head_outputs) for b in self.blocks]).mean()
            loss = loss + cfg.aux_head_diversity * penalty
            parts["head_diversity"] = penalty
        if cfg.aux_logdet > 0:
            penalty = torch.stack([logdet_penalty(h) for h in hidden]).mean()
            loss = loss + cfg.aux_logdet * penalty
            parts["logdet"] = penalty
        self.last_losses = {k: float(v.detach()) for k, v in parts.items()}
        return loss

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Sample continuations of idx (B, T) with a KV cache; temperature 0 is greedy."""
        cache = KVCache.empty(self.config.n_layers)
        logits, _ = self(idx, cache=cache)
        out = [idx]
        for _ in range(max_new_tokens):
            last = logits[:, -1, :]  # (B, V)
            if temperature == 0:
                nxt = last.argmax(-1, keepdim=True)
            else:
                last = last / temperature
                if top_k is not None:
                    kth = torch.topk(last, min(top_k, last.shape[-1])).values[:, -1:]
                    last = last.masked_fill(last < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(last, -1), 1, generator=generator)  # (B, 1)
            out.append(nxt)
            logits, _ = self(nxt, cache=cache)
        return torch.cat(out, dim=1)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if non_embedding else n

    # ------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> Path:
        """Write model.safetensors and config.json into `directory` (each atomically)."""
        from safetensors.torch import save

        from attnlab._version import __version__
        from attnlab.io import atomic_write_bytes, atomic_write_json

        directory = Path(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
        atomic_write_json(directory / CONFIG_FILE,
                          {"model_type": MODEL_TYPE, "attnlab_version": __version__, **self.config.to_dict()})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> GPT:
        """Load a model written by `save` (or a training checkpoint folder)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        weights, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
        if not weights.is_file() or not config_path.is_file():
            raise ModelNotFoundError(f"no attnlab model in {directory} (expected {WEIGHTS_FILE} and "
                                     f"{CONFIG_FILE}); train one with `attnlab train --out DIR` and pass "
                                     f"DIR/checkpoint")
        config = GPTConfig.from_json(str(config_path))
        model = cls(config)
        state = load_file(str(weights), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"{weights} does not match {config_path}: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}; save the model again with GPT.save")
        return model.to(map_location)


__all__ = ["GPT", "GPTConfig", "KVCache", "Attention", "MLP", "Block"]
