"""A padded batch of texts: `LoadedModel.encode(["a", "b c"])` -> `TokenBatch(input_ids, attention_mask)`.

Padding is on the right, as TransformerLens's `to_tokens` does by default: every sequence keeps positions
0..n-1, so under causal attention a real token never sees a pad and its logits are those of the sequence
alone. The mask (1 = real token, 0 = pad) still travels with the ids and every forward honours it (HF
models take it as `attention_mask`; attnlab's GPT hides the pad keys, which matters for non-causal spans).
A `TokenBatch` is a mapping with the keys HF's tokenizers return, so `model(**batch)` works too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from attnlab.errors import DataError


class TokenBatch(Mapping):
    """input_ids (B, T) long, right-padded; attention_mask (B, T) long, 1 = real token, 0 = pad."""

    def __init__(self, input_ids: Tensor, attention_mask: Tensor) -> None:
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask "
                             f"{tuple(attention_mask.shape)} must be the same (batch, tokens) shape")
        self.input_ids, self.attention_mask = input_ids, attention_mask

    def __getitem__(self, key: str) -> Tensor:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}[key]

    def __iter__(self) -> Iterator[str]:
        return iter(("input_ids", "attention_mask"))

    def __len__(self) -> int:
        return 2

    @property
    def shape(self) -> torch.Size:
        return self.input_ids.shape

    @property
    def lengths(self) -> list[int]:
        """Real tokens per sequence."""
        return [int(n) for n in self.attention_mask.sum(-1)]

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device))

    def __repr__(self) -> str:
        return f"TokenBatch(batch={self.shape[0]}, tokens={self.shape[1]}, lengths={self.lengths})"


def pad_batch(texts: Sequence[str], encode: Any, pad_id: int, device: torch.device) -> TokenBatch:
    """Encode each text with `encode(str) -> list[int]` and right-pad with `pad_id`."""
    if len(texts) == 0:
        raise DataError("encode() got an empty list; pass at least one text")
    rows: list[list[int]] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str or a list of str; item {i} is {type(text).__name__}")
        ids = encode(text) if text else []
        if len(ids) == 0:
            raise DataError(f"text {i} of the batch ({text[:40]!r}) is empty or encodes to no tokens; "
                            f"drop it or pass at least one character")
        rows.append(list(ids))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, :len(row)] = 1
    return TokenBatch(ids.to(device), mask.to(device))


def split(ids: Any, attention_mask: Tensor | None) -> tuple[Any, Tensor | None]:
    """(ids, mask) from ids that may be a TokenBatch / HF BatchEncoding, or a tensor plus a separate mask."""
    if isinstance(ids, Mapping) and "input_ids" in ids:
        if attention_mask is None:
            attention_mask = ids.get("attention_mask")
        ids = ids["input_ids"]
    return ids, attention_mask


__all__ = ["TokenBatch", "pad_batch", "split"]
