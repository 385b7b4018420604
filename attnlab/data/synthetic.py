"""Seeded synthetic tasks for the studies: max retrieval, copy-first / copy-last, counting ones, passkey.

Every generator returns a `TaskData` laid out for a causal language model:

    inputs  (N, T) long   the token sequences
    targets (N, T) long   targets[n, t] is the token to predict after reading inputs[n, :t+1];
                          IGNORE_INDEX (-100) where nothing is scored, so
                          F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
                          is the task loss
    mask    (N, T) bool   True at the scored positions (targets != IGNORE_INDEX)
    labels  (N,) / (N, k) the answer in class space (value, bit, count, digits), for probes and accuracy

Each task has its own small vocabulary with its special token ids reserved explicitly (the constants in
each generator's docstring and `TaskData.vocab`). Sequences of one call all have the same length, so
there is no padding. The same (arguments, seed) always gives the same tensors; generation uses its own
torch.Generator and never touches the global RNG.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TaskData:
    """A synthetic task's samples (see the module docstring for the layout)."""

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    vocab_size: int
    vocab: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    def subset(self, index: slice | torch.Tensor) -> TaskData:
        """Rows `index` of every per-sample tensor (inputs, targets, mask, labels, and tensor metadata)."""
        n = len(self)
        meta = {k: (v[index] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v)
                for k, v in self.meta.items()}
        return TaskData(self.name, self.inputs[index], self.targets[index], self.mask[index],
                        self.labels[index], self.vocab_size, dict(self.vocab), meta)

    def to(self, device: torch.device | str) -> TaskData:
        """The same samples with every tensor (metadata included) on `device`."""
        meta = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.meta.items()}
        return TaskData(self.name, self.inputs.to(device), self.targets.to(device), self.mask.to(device),
                        self.labels.to(device), self.vocab_size, dict(self.vocab), meta)


def sample_correct(logits: torch.Tensor, data: TaskData) -> torch.Tensor:
    """(N,) bool: every scored position's argmax equals its target. logits: (N, T, vocab)."""
    if logits.shape[:2] != data.targets.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not match the task's (N, T) = "
                         f"{tuple(data.targets.shape)}; run the model on data.inputs")
    hit = (logits.argmax(-1) == data.targets) | ~data.mask
    return hit.all(dim=1)


def accuracy(logits: torch.Tensor, data: TaskData) -> float:
    """Fraction of samples answered exactly right (all scored positions)."""
    return sample_correct(logits, data).float().mean().item()


# ---------------------------------------------------------------------------------------------------------
# Max retrieval (Velickovic et al. 2024)
# ---------------------------------------------------------------------------------------------------------

MAXR_PAD, MAXR_QUERY, MAXR_ANSWER_BASE = 0, 1, 2


def max_retrieval(
    n_samples: int, n_items: int, seed: int = 0, n_priorities: int = 16, n_values: int = 4
) -> TaskData:
    """Max retrieval: find the item with the highest priority in a set and answer its value.

    Velickovic, Perivolaropoulos, Barbero, Pascanu 2024, "softmax is not enough (for sharp
    out-of-distribution)": a model trained to retrieve the maximum of sets of <= 16 items fails on larger
    sets because softmax attention disperses, max_j a_ij -> 0 as n grows for bounded logits.

    Each item is ONE token that carries a priority p in [0, n_priorities) and a value v in [0, n_values):
    id = item_base + p * n_values + v. A single attention layer can therefore solve the task (the query's
    score for an item grows with its priority; its value vector carries v) and the same model runs at any
    set size, e.g. trained at 16 items and tested at 16 ... 4096. The defaults (16 priorities, 4 values,
    vocab_size 70) are sized so that a 1-layer d=64 GPT learns the task at 16 items in about 1500 Adam
    steps of 64 samples; with 32 x 8 the same model stayed at chance for 1200 steps.

    Sequence (T = n_items + 1):  item_1 ... item_n QUERY  ->  target at QUERY = ANSWER_BASE + v*.
    The winner is unique: its priority p* is uniform in [1, n_priorities), every other item's is uniform
    in [0, p*), and it sits at a uniform position. Values are uniform and independent.

    Vocabulary: PAD = 0 (reserved, unused), QUERY = 1, answers 2 .. 2 + n_values - 1, items from
    item_base = 2 + n_values; vocab_size = 2 + n_values + n_priorities * n_values.
    labels: (N,) the winner's value v*. meta: winner_pos (N,), priorities (N, n), values (N, n).
    """
    _check_positive(n_samples=n_samples, n_items=n_items, n_values=n_values)
    if n_priorities < 2:
        raise ValueError(f"n_priorities must be >= 2 (a winner above the rest), got {n_priorities}")
    g = _generator(seed)
    item_base = MAXR_ANSWER_BASE + n_values
    n, N = n_items, n_samples
    top = torch.randint(1, n_priorities, (N,), generator=g)
    # Uniform in [0, top): floor(u * top) with u in [0, 1); clamp guards u*top rounding up to top.
    prio = (torch.rand(N, n, generator=g, dtype=torch.float64) * top[:, None]).long()
    prio = torch.minimum(prio, top[:, None] - 1)
    winner = torch.randint(0, n, (N,), generator=g)
    rows = torch.arange(N)
    prio[rows, winner] = top
    values = torch.randint(0, n_values, (N, n), generator=g)
    answer = values[rows, winner]
    items = item_base + prio * n_values + values
    inputs = torch.cat([items, torch.full((N, 1), MAXR_QUERY)], dim=1)
    targets, mask = _answer_at_end(inputs, (MAXR_ANSWER_BASE + answer)[:, None])
    vocab = {"pad": MAXR_PAD, "query": MAXR_QUERY, "answer_base": MAXR_ANSWER_BASE, "item_base": item_base}
    vocab_size = item_base + n_priorities * n_values
    return TaskData("max_retrieval", inputs, targets, mask, answer, vocab_size, vocab,
                    {"winner_pos": winner, "priorities": prio, "values": values,
                     "n_priorities": n_priorities, "n_values": n_values})


def max_retrieval_continuous(n_samples: int, n_items: int, seed: int = 0, n_values: int = 4) -> TaskData:
    """Max retrieval with real-valued priorities, the paper's setting (Velickovic et al. 2024).

    Each item is ONE token carrying its value v (id = item_base + v) and a priority p, a real number uniform
    in [0, 1) given as a per-token scalar feature next to the ids (meta "priority", (N, T) float32; 0 at the
    QUERY), which the model embeds itself (e.g. token embedding + a learned projection of p). Unlike the
    discrete task, the gap between the top priority and the runner-up shrinks (about 1/n) as the set grows,
    and the priorities stay in a bounded range, so a model's attention logits stay bounded too: the premise
    under which softmax must disperse.

    Sequence (T = n_items + 1):  item_1 ... item_n QUERY  ->  target at QUERY = ANSWER_BASE + v of argmax p
    (unique with probability 1). Vocabulary: PAD = 0 (reserved, unused), QUERY = 1, answers
    2 .. 1 + n_values, items from item_base = 2 + n_values; vocab_size = 2 + 2 * n_values.
    labels: (N,) the winner's value. meta: priority (N, T), priorities (N, n), values (N, n),
    winner_pos (N,), priority_gap (N,) top priority minus the runner-up (0 for a single item).
    """
    _check_positive(n_samples=n_samples, n_items=n_items, n_values=n_values)
    g = _generator(seed)
    item_base = MAXR_ANSWER_BASE + n_values
    N, n = n_samples, n_items
    prio = torch.rand(N, n, generator=g)
    values = torch.randint(0, n_values, (N, n), generator=g)
    top2 = prio.topk(min(2, n), dim=1)
    winner = top2.indices[:, 0]
    gap = top2.values[:, 0] - top2.values[:, 1] if n > 1 else torch.zeros(N)
    answer = values[torch.arange(N), winner]
    inputs = torch.cat([item_base + values, torch.full((N, 1), MAXR_QUERY)], dim=1)
    targets, mask = _answer_at_end(inputs, (MAXR_ANSWER_BASE + answer)[:, None])
    vocab = {"pad": MAXR_PAD, "query": MAXR_QUERY, "answer_base": MAXR_ANSWER_BASE, "item_base": item_base}
    priority = torch.cat([prio, torch.zeros(N, 1)], dim=1)
    return TaskData("max_retrieval_continuous", inputs, targets, mask, answer, item_base + n_values, vocab,
                    {"priority": priority, "priorities": prio, "values": values, "winner_pos": winner,
                     "priority_gap": gap, "n_values": n_values})


# ---------------------------------------------------------------------------------------------------------
# Copy-first / copy-last and counting (Barbero et al. 2024)
# ---------------------------------------------------------------------------------------------------------

BIT_ZERO, BIT_ONE, BIT_QUERY, COUNT_BASE = 0, 1, 2, 3
_BIT_VOCAB = {"zero": BIT_ZERO, "one": BIT_ONE, "query": BIT_QUERY}
BIT_FILL = 3  # copy tasks only: the filler that moves b away from the ends (pad)


def copy_first(n_samples: int, length: int, seed: int = 0, pad: int = 0) -> TaskData:
    """Copy the first bit of "b 1 1 ... 1": the target is b.

    Barbero, Banino, Kapturowski, Kumaran, Araujo, Vitvitskyi, Pascanu, Velickovic 2024, "Transformers need
    glasses! Information over-squashing in language tasks": a decoder-only model's last-token
    representation of "0 1 1 ... 1" and "1 1 1 ... 1" collapse together as the sequence grows
    (representational collapse), so copying the FIRST token fails at lengths where copying the LAST one
    (`copy_last`) still works.

    Sequence (T = pad + length + 1): pad FILL tokens, b, then length - 1 ones, then QUERY; target at QUERY
    = b (uniform bit, so b = 0 gives the paper's "0 1 1 ... 1"). b sits at position pad, `length` positions
    before QUERY. Vocabulary: 0 = "0", 1 = "1", 2 = QUERY, 3 = FILL; vocab_size 4 (FILL appears only when
    pad > 0). labels: (N,) the bit b.
    """
    return _copy_bit("copy_first", n_samples, length, seed, first=True, pad=pad)


def copy_last(n_samples: int, length: int, seed: int = 0, pad: int = 0) -> TaskData:
    """Copy the last bit of "1 ... 1 b": the target is b (Barbero et al. 2024; see `copy_first`).

    Sequence (T = length + pad + 1): length - 1 ones, b, then pad FILL tokens, then QUERY; target at QUERY
    = b, which sits pad + 1 positions before QUERY. So copy_first(n, d, pad=p) and
    copy_last(n, p + 1, pad=d - 1) put b at the same position p and distance d from QUERY in sequences of
    the same length: only which side of b the ones are on differs. Vocabulary as `copy_first`.
    labels: (N,) the bit b.
    """
    return _copy_bit("copy_last", n_samples, length, seed, first=False, pad=pad)


def _copy_bit(name: str, n_samples: int, length: int, seed: int, first: bool, pad: int = 0) -> TaskData:
    _check_positive(n_samples=n_samples)
    _check_length(length, 2, "one distinguished bit plus at least one 1")
    if _as_int(pad) is None or pad < 0:
        raise ValueError(f"pad must be a non-negative integer (FILL tokens around the bits), got {pad!r}")
    g = _generator(seed)
    bit = torch.randint(0, 2, (n_samples,), generator=g)
    bits = torch.full((n_samples, length), BIT_ONE, dtype=torch.long)
    bits[:, 0 if first else length - 1] = bit
    fill = torch.full((n_samples, int(pad)), BIT_FILL, dtype=torch.long)
    query = torch.full((n_samples, 1), BIT_QUERY)
    inputs = torch.cat([fill, bits, query] if first else [bits, fill, query], dim=1)
    targets, mask = _answer_at_end(inputs, bit[:, None])
    return TaskData(name, inputs, targets, mask, bit, 4, dict(_BIT_VOCAB, fill=BIT_FILL),
                    {"length": length, "pad": int(pad), "bit_pos": int(pad) if first else length - 1})


def count_ones(
    n_samples: int, length: int, seed: int = 0, p_one: float | None = None, max_count: int | None = None
) -> TaskData:
    """Count the ones in a bit sequence: the target is the count as a token.

    Barbero et al. 2024 ("Transformers need glasses!", see `copy_first`) show counting fails as sequences
    grow, since the final representations of sequences of ones of nearby lengths collapse together.

    Sequence (T = length + 1): length bits, then QUERY; target at QUERY = COUNT_BASE + count.
    With p_one=None the count is uniform in [0, length] and the ones sit at random positions (every
    count equally often); with p_one in [0, 1] each bit is 1 with probability p_one (p_one=1.0 is the
    paper's all-ones sequence, count = length).
    Vocabulary: 0 = "0", 1 = "1", 2 = QUERY, counts c -> 3 + c for c in 0..max_count (max_count defaults
    to length: pass the largest test length to train and test with one vocabulary);
    vocab_size = 4 + max_count. labels: (N,) the count.
    """
    _check_positive(n_samples=n_samples)
    _check_length(length, 1, "at least one bit")
    if max_count is None:
        max_count = length
    if max_count < length:
        raise ValueError(f"max_count ({max_count}) must be >= length ({length}) so every count has a token; "
                         "pass max_count >= the longest length you will test")
    if p_one is not None and not 0.0 <= p_one <= 1.0:
        raise ValueError(f"p_one must be in [0, 1] or None, got {p_one}")
    g = _generator(seed)
    if p_one is None:
        count = torch.randint(0, length + 1, (n_samples,), generator=g)
        # Rank of a random key per position: the `count` positions with the smallest keys get a one.
        ranks = torch.rand(n_samples, length, generator=g).argsort(dim=1).argsort(dim=1)
        bits = (ranks < count[:, None]).long()
    else:
        bits = (torch.rand(n_samples, length, generator=g) < p_one).long()
        count = bits.sum(dim=1)
    inputs = torch.cat([bits, torch.full((n_samples, 1), BIT_QUERY)], dim=1)
    targets, mask = _answer_at_end(inputs, (COUNT_BASE + count)[:, None])
    vocab = dict(_BIT_VOCAB, count_base=COUNT_BASE)
    return TaskData("count_ones", inputs, targets, mask, count, COUNT_BASE + max_count + 1, vocab,
                    {"length": length, "max_count": max_count})


# ---------------------------------------------------------------------------------------------------------
# Passkey retrieval (Mohtashami & Jaggi 2023)
# ---------------------------------------------------------------------------------------------------------

PASSKEY_KEY, PASSKEY_QUERY, PASSKEY_FILLER_BASE = 10, 11, 12


def passkey(
    n_samples: int, length: int, seed: int = 0, n_digits: int = 5, n_filler: int = 16,
    depth: float | None = None,
) -> TaskData:
    """Passkey retrieval: a key of digits hidden in filler; after QUERY, repeat the digits.

    Mohtashami & Jaggi 2023, "Landmark attention: random-access infinite context length for
    transformers" (the passkey test), as used by StreamingLLM (Xiao et al. 2024) and length-extension
    work to check whether information from far back is still retrievable.

    Sequence (T = length): filler, KEY d_1 ... d_k, filler, QUERY d_1 ... d_{k-1}. The model is scored on
    predicting d_1 at QUERY and d_{i+1} after d_i (teacher forcing), i.e. on the last k positions.
    Filler tokens are uniform over n_filler ids. The KEY sits after round(depth * F) filler tokens, where
    F = length - 2k - 1 is the number of filler tokens; depth=None draws the depth uniformly per sample.
    Vocabulary: digits 0-9 = ids 0-9, KEY = 10, QUERY = 11, filler from 12; vocab_size = 12 + n_filler.
    labels: (N, k) the digits. meta: key_pos (N,), the index of KEY.
    """
    _check_positive(n_samples=n_samples, n_digits=n_digits, n_filler=n_filler)
    need = 2 * n_digits + 1
    _check_length(length, need, f"KEY + {n_digits} digits + QUERY + {n_digits - 1} answer digits")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1] (0 = start, 1 = end of the filler) or None, got {depth}")
    g = _generator(seed)
    N, k = n_samples, n_digits
    n_fill = length - need
    digits = torch.randint(0, 10, (N, k), generator=g)
    filler = PASSKEY_FILLER_BASE + torch.randint(0, n_filler, (N, max(n_fill, 0)), generator=g)
    if depth is None:
        key_pos = torch.randint(0, n_fill + 1, (N,), generator=g)
    else:
        key_pos = torch.full((N,), round(depth * n_fill), dtype=torch.long)
    hay = length - k  # haystack: filler + KEY + digits, then QUERY + k-1 answer digits
    inputs = torch.empty(N, length, dtype=torch.long)
    # Haystack positions before key_pos take filler[:, j]; those after the needle take filler[:, j - k - 1].
    pos = torch.arange(hay)[None, :].expand(N, hay)
    rel = pos - key_pos[:, None]
    fill_idx = torch.where(rel < 0, pos, pos - k - 1).clamp(0, max(n_fill - 1, 0))
    hay_tokens = filler.gather(1, fill_idx) if n_fill > 0 else torch.zeros(N, hay, dtype=torch.long)
    hay_tokens = torch.where(rel == 0, torch.full_like(hay_tokens, PASSKEY_KEY), hay_tokens)
    in_key = (rel >= 1) & (rel <= k)
    hay_tokens = torch.where(in_key, digits.gather(1, (rel - 1).clamp(0, k - 1)), hay_tokens)
    inputs[:, :hay] = hay_tokens
    inputs[:, hay] = PASSKEY_QUERY
    inputs[:, hay + 1:] = digits[:, :-1]
    targets, mask = _answer_at_end(inputs, digits)
    vocab = {"digit_base": 0, "key": PASSKEY_KEY, "query": PASSKEY_QUERY, "filler_base": PASSKEY_FILLER_BASE}
    return TaskData("passkey", inputs, targets, mask, digits, PASSKEY_FILLER_BASE + n_filler, vocab,
                    {"key_pos": key_pos, "n_digits": k})


SYNTHETIC_TASKS = {
    "max_retrieval": max_retrieval,
    "copy_first": copy_first,
    "copy_last": copy_last,
    "count_ones": count_ones,
    "passkey": passkey,
}


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _answer_at_end(inputs: torch.Tensor, answer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets/mask scoring the last k positions with answer (N, k); everything else IGNORE_INDEX."""
    k = answer.shape[1]
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[:, -k:] = answer
    return targets, targets != IGNORE_INDEX


def _generator(seed: int) -> torch.Generator:
    if _as_int(seed) is None:
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(int(seed))


def _as_int(value: object) -> int | None:
    """value as an int if it is an integer (numpy integers included, bools not), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        v = _as_int(value)
        if v is None or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_length(length: int, need: int, why: str) -> None:
    v = _as_int(length)
    if v is None or v < need:
        raise ValueError(f"length must be >= {need} ({why}), got {length!r}; pass a larger length")
