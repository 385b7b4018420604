"""Language-model batches from one token stream: a seeded train/val split, resumable random batches, and
deterministic validation windows.

Shapes: a token stream is a 1-D LongTensor (n,); a batch is (x, y), both (batch_size, context), with
y[b, t] = x[b, t + 1] (the next token).

Determinism and resume: `LMBatches.batch(step)` is a pure function of (seed, step). Its row offsets come
from a torch.Generator seeded with a hash of (seed, step), not from a generator advanced step by step, so a
run resumed at step s sees exactly the batches an uninterrupted run would have seen, with no state to save.

Data parallelism: the global batch of step s is the same whatever the number of processes; rank r of w
gets the contiguous rows [r * batch_size / w, (r + 1) * batch_size / w). Averaging the ranks' gradients
therefore equals single-process training on the global batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from attnlab.data.tokenizers import ByteTokenizer
from attnlab.errors import DataError


def encode_corpus(text: str, tokenizer) -> torch.Tensor:
    """The whole text as one 1-D LongTensor of token ids."""
    if isinstance(tokenizer, ByteTokenizer):
        # Same ids as tokenizer.encode, without a Python list of ~10M ints in between.
        ids = torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
    else:
        ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    if ids.numel() == 0:
        raise DataError("the text encodes to no tokens; pass a non-empty text")
    return ids


def split_tokens(
    tokens: torch.Tensor, val_fraction: float = 0.1, seed: int = 0, n_blocks: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, seeded train/val split of a token stream.

    The stream is cut into `n_blocks` equal contiguous blocks (fewer for very short streams) and
    round(val_fraction * blocks) of them, at least one when val_fraction > 0, go to validation, chosen by
    a permutation seeded with `seed`. Each split is its blocks concatenated in their original order, so
    both splits sample the whole corpus (not just its last act) and the split depends only on
    (len(tokens), val_fraction, seed, n_blocks). val_fraction = 0 gives an empty validation split.
    """
    tokens = _check_tokens(tokens)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}; e.g. 0.1 holds out 10%")
    if n_blocks < 2:
        raise ValueError(f"n_blocks must be >= 2, got {n_blocks}")
    n = tokens.numel()
    if val_fraction == 0.0:
        return tokens, tokens[:0]
    blocks = min(n_blocks, n)
    if blocks < 2:
        raise DataError(f"text has {n} tokens, too few to split into train and validation; use a longer text")
    n_val = min(max(1, round(val_fraction * blocks)), blocks - 1)
    bounds = torch.linspace(0, n, blocks + 1).round().long().tolist()
    g = torch.Generator().manual_seed(_derive_seed("split", seed))
    val_ids = set(torch.randperm(blocks, generator=g)[:n_val].tolist())
    train = [tokens[bounds[i]:bounds[i + 1]] for i in range(blocks) if i not in val_ids]
    val = [tokens[bounds[i]:bounds[i + 1]] for i in range(blocks) if i in val_ids]
    return torch.cat(train), torch.cat(val)


class LMBatches:
    """Random (x, y) windows of a token stream, a pure function of (seed, step).

    Each of the batch_size rows starts at an offset drawn uniformly from [0, n - context - 1], from a
    torch.Generator seeded with sha256("lm-batch", seed, step).
    """

    def __init__(self, tokens: torch.Tensor, context: int, batch_size: int, seed: int = 0) -> None:
        self.tokens = _check_tokens(tokens)
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _check_long_enough(self.tokens, context)
        self.context = int(context)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._window = torch.arange(self.context + 1)

    @property
    def n_offsets(self) -> int:
        """How many distinct windows there are."""
        return self.tokens.numel() - self.context

    def offsets(self, step: int) -> torch.Tensor:
        """The global batch's start offsets at `step`, (batch_size,)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        g = torch.Generator().manual_seed(_derive_seed("lm-batch", self.seed, step))
        return torch.randint(0, self.n_offsets, (self.batch_size,), generator=g)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) for `step`; with world_size > 1, rank's contiguous share of the global batch.

        x, y: (batch_size // world_size, context), y = x shifted left by one token.
        """
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if self.batch_size % world_size:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by world_size {world_size}; "
                "pick a batch size that is a multiple of the number of processes"
            )
        per_rank = self.batch_size // world_size
        starts = self.offsets(step)[rank * per_rank:(rank + 1) * per_rank]
        rows = self.tokens[starts[:, None] + self._window]  # (per_rank, context + 1)
        return rows[:, :-1], rows[:, 1:]

    def __repr__(self) -> str:
        return (f"LMBatches(tokens={self.tokens.numel()}, context={self.context}, "
                f"batch_size={self.batch_size}, seed={self.seed})")


def eval_batches(
    tokens: torch.Tensor, context: int, batch_size: int, max_batches: int | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows [i*context, (i+1)*context] in order, in batches (the last may be smaller).

    Deterministic (no randomness at all); every token except the tail that does not fill a window is
    predicted exactly once, so the mean loss over these batches is the validation loss.
    """
    tokens = _check_tokens(tokens)
    if context < 1 or batch_size < 1:
        raise ValueError(f"context and batch_size must be >= 1, got {context} and {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    _check_long_enough(tokens, context, what="validation text")
    n_windows = (tokens.numel() - 1) // context
    if max_batches is not None:
        n_windows = min(n_windows, max_batches * batch_size)
    starts = torch.arange(n_windows) * context
    window = torch.arange(context + 1)
    out = []
    for i in range(0, n_windows, batch_size):
        rows = tokens[starts[i:i + batch_size, None] + window]
        out.append((rows[:, :-1], rows[:, 1:]))
    return out


def _check_tokens(tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}; flatten it first")
    if tokens.dtype != torch.long:
        tokens = tokens.long()
    return tokens


def _check_long_enough(tokens: torch.Tensor, context: int, what: str = "text") -> None:
    n = tokens.numel()
    if n < context + 1:
        raise DataError(
            f"{what} has {n} tokens but one context needs context+1 = {context + 1}; "
            "use a longer text or a smaller --context"
        )


def _derive_seed(*parts: object) -> int:
    """A 63-bit seed from a stable hash (Python's hash() is salted per process, so it cannot be used)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
