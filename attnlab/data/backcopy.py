"""Bigram-Backcopy (Guo et al. 2024, "Active-Dormant Attention Heads", arXiv 2410.13835): the task on
which small transformers trained from scratch grow a first-token attention sink.

A sequence is a beginning-of-sequence token at position 0, then tokens of a fixed bigram chain, except
that right after a *trigger* token the next token copies the token before the trigger:

    x_0 = BOS
    x_1 ~ the chain's stationary distribution restricted to non-triggers
    x_t = x_{t-2}                    if x_{t-1} is a trigger   (backcopy: needs attention)
    x_t ~ P[x_{t-1}, :]              otherwise                  (bigram: needs no attention at all)

At non-trigger positions the best prediction depends on the current token only, so an attention head has
nothing to do there; with softmax it must still put weight 1 somewhere, and it learns to park it on BOS
(a *dormant* head, the sink). At trigger positions it attends to the previous token (an *active* head).
Softmax1 can put the weight on no key instead, which is the off-by-one question on data that provably
grows the pathology.

The chain is fixed across seeds (it is part of the task, like a language): row i of P is a Dirichlet
draw with concentration `alpha` from a generator seeded by `chain_seed`, so each token has a few likely
successors and the bigram part is learnable but not trivial. Triggers are the `n_triggers` tokens of
largest stationary probability (the paper's "most frequent tokens"). The rule applies at every position
t >= 2, including right after a copied trigger.

Token ids: 0 .. vocab-1 are the chain's tokens, BOS = vocab; `vocab_size = vocab + 1`.
"""

from __future__ import annotations

from typing import Any

import torch

from attnlab.data.synthetic import IGNORE_INDEX, TaskData, _as_int, _generator

DEFAULTS: dict[str, Any] = {"vocab": 64, "n_triggers": 3, "length": 64, "alpha": 0.1, "chain_seed": 0}


def bigram_chain(vocab: int = DEFAULTS["vocab"], alpha: float = DEFAULTS["alpha"],
                 chain_seed: int = DEFAULTS["chain_seed"]) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, pi): the (vocab, vocab) transition matrix, rows Dirichlet(alpha), and its stationary
    distribution (vocab,), float64. The same arguments always give the same chain."""
    v = _as_int(vocab)
    if v is None or v < 2:
        raise ValueError(f"vocab must be an integer >= 2 (a chain needs two tokens), got {vocab!r}")
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"alpha (the Dirichlet concentration of the chain's rows) must be > 0, got "
                         f"{alpha!r}")
    g = _generator(chain_seed)
    # Dirichlet(alpha) = normalised Gamma(alpha, 1) draws. torch's Gamma sampler takes no generator, and
    # the chain must not depend on the global RNG, so the draws are Marsaglia & Tsang's on g.
    gam = _gamma(torch.full((v, v), float(alpha), dtype=torch.float64), g)
    P = gam / gam.sum(dim=1, keepdim=True)
    pi = torch.full((v,), 1.0 / v, dtype=torch.float64)
    for _ in range(10_000):  # power iteration; the chain is dense (every Gamma draw > 0), so it mixes
        nxt = pi @ P
        if torch.max(torch.abs(nxt - pi)) < 1e-14:
            pi = nxt
            break
        pi = nxt
    return P, pi / pi.sum()


def _gamma(shape: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Gamma(shape, 1) draws from generator g (Marsaglia & Tsang 2000; shape < 1 via the U^(1/a) boost)."""
    boost = shape < 1
    a = torch.where(boost, shape + 1, shape)
    d = a - 1.0 / 3
    c = 1.0 / torch.sqrt(9 * d)
    out = torch.zeros_like(a)
    todo = torch.ones_like(a, dtype=torch.bool)
    while todo.any():
        x = torch.randn(a.shape, generator=g, dtype=torch.float64)
        u = torch.rand(a.shape, generator=g, dtype=torch.float64)
        v = (1 + c * x) ** 3
        ok = (v > 0) & (torch.log(u.clamp_min(1e-300)) < 0.5 * x * x + d - d * v + d * torch.log(
            v.clamp_min(1e-300)))
        take = todo & ok
        out = torch.where(take, d * v, out)
        todo = todo & ~ok
    u = torch.rand(a.shape, generator=g, dtype=torch.float64)
    return torch.where(boost, out * u ** (1.0 / shape), out).clamp_min(1e-300)


def bigram_backcopy(n_samples: int, length: int = DEFAULTS["length"], seed: int = 0, *,
                    vocab: int = DEFAULTS["vocab"], n_triggers: int = DEFAULTS["n_triggers"],
                    alpha: float = DEFAULTS["alpha"], chain_seed: int = DEFAULTS["chain_seed"]) -> TaskData:
    """`n_samples` Bigram-Backcopy sequences of `length` tokens (BOS included), drawn with `seed`.

    Every position is scored (next-token prediction, the paper's training loss); `meta["trigger"]` (N, T)
    bool marks the positions t whose input token is a trigger (the target at t is then a backcopy, a
    deterministic function of the context), `meta["dormant"]` the other positions t >= 1 (the target
    follows the chain: attention is not needed), `meta["floor"]` (N, T) the loss no model can beat there (the
entropy of the chain's row, nats; 0 elsewhere). labels: (N,) number of triggers in the sequence.
    """
    n, T = _as_int(n_samples), _as_int(length)
    if n is None or n < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    if T is None or T < 3:
        raise ValueError(f"length must be >= 3 (BOS, a token, and one that can follow a trigger), got "
                         f"{length!r}")
    P, pi = bigram_chain(vocab, alpha, chain_seed)  # checks vocab and alpha
    k = _as_int(n_triggers)
    if k is None or not 1 <= k < vocab:
        raise ValueError(f"n_triggers must be an integer in 1 .. vocab - 1 = {vocab - 1} (at least one token "
                         f"must not be a trigger), got {n_triggers!r}; lower n_triggers or raise vocab")
    triggers = torch.argsort(pi, descending=True, stable=True)[:k]
    is_trigger = torch.zeros(vocab, dtype=torch.bool)
    is_trigger[triggers] = True
    g = _generator(seed)
    start = torch.where(is_trigger, 0.0, pi)
    x = torch.empty(n, T, dtype=torch.long)
    x[:, 0] = vocab  # BOS
    x[:, 1] = torch.multinomial(start.expand(n, -1), 1, generator=g).squeeze(1)
    for t in range(2, T):
        prev = x[:, t - 1]
        drawn = torch.multinomial(P[prev], 1, generator=g).squeeze(1)
        x[:, t] = torch.where(is_trigger[prev], x[:, t - 2], drawn)
    targets = torch.full_like(x, IGNORE_INDEX)
    targets[:, :-1] = x[:, 1:]
    mask = targets != IGNORE_INDEX
    tok = x.clamp_max(vocab - 1)  # BOS -> a stand-in id; position 0 is handled below
    trig = is_trigger[tok] & mask
    trig[:, 0] = False
    dormant = ~is_trigger[tok] & mask
    dormant[:, 0] = False  # the BOS query is neither: it sees only itself
    row_h = -(P * torch.log(P.clamp_min(1e-300))).sum(dim=1)  # (vocab,) nats
    floor = torch.where(dormant, row_h[tok], torch.zeros((), dtype=torch.float64))
    return TaskData("bigram_backcopy", x, targets, mask, trig.sum(dim=1), vocab + 1,
                    {"bos": vocab, **{f"trigger_{i}": int(t) for i, t in enumerate(triggers)}},
                    {"trigger": trig, "dormant": dormant, "triggers": triggers.tolist(),
                     "params": {"vocab": int(vocab), "n_triggers": k, "length": T, "alpha": float(alpha),
                                "chain_seed": int(chain_seed)},
                     "floor": floor})


__all__ = ["DEFAULTS", "bigram_backcopy", "bigram_chain"]
