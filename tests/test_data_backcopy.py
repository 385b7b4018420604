"""Bigram-Backcopy (Guo et al. 2024): the rule, the fixed chain, the triggers, and bad settings."""

from __future__ import annotations

import pytest
import torch

from attnlab.data.backcopy import DEFAULTS, bigram_backcopy, bigram_chain


def test_every_position_follows_the_rule() -> None:
    d = bigram_backcopy(64, 40, seed=3)
    x, t = d.inputs, d.targets
    bos = d.vocab["bos"]
    assert bos == DEFAULTS["vocab"] and d.vocab_size == bos + 1
    assert (x[:, 0] == bos).all() and (x[:, 1:] != bos).all()
    triggers = set(d.meta["triggers"])
    assert not any(int(v) in triggers for v in x[:, 1])  # nothing to copy yet after BOS
    P, _ = bigram_chain()
    for n in range(64):
        for i in range(2, 40):
            prev = int(x[n, i - 1])
            if prev in triggers:
                assert x[n, i] == x[n, i - 2]
            else:
                assert P[prev, int(x[n, i])] > 0
    assert (t[:, :-1] == x[:, 1:]).all() and (t[:, -1] == -100).all()
    trig, dorm = d.meta["trigger"], d.meta["dormant"]
    scored_after_bos = d.mask.clone().index_fill_(1, torch.tensor([0]), False)
    assert not (trig & dorm).any() and ((trig | dorm) == scored_after_bos).all()
    assert all(int(x[n, i]) in triggers for n, i in trig.nonzero().tolist())


def test_chain_and_triggers_are_fixed_across_seeds_and_the_data_is_reproducible() -> None:
    a, b = bigram_backcopy(8, 16, seed=0), bigram_backcopy(8, 16, seed=1)
    assert a.meta["triggers"] == b.meta["triggers"] and not torch.equal(a.inputs, b.inputs)
    assert torch.equal(bigram_backcopy(8, 16, seed=1).inputs, b.inputs)
    P, pi = bigram_chain()
    assert torch.allclose(P.sum(dim=1), torch.ones(64, dtype=torch.float64))
    assert torch.allclose(pi @ P, pi, atol=1e-12)
    assert a.meta["triggers"] == torch.argsort(pi, descending=True)[:3].tolist()  # the most frequent
    rng = torch.get_rng_state()
    bigram_backcopy(4, 8, seed=5)
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is untouched


def test_floor_is_the_chain_rows_entropy_at_dormant_positions() -> None:
    d = bigram_backcopy(16, 32, seed=2)
    P, _ = bigram_chain()
    n, i = d.meta["dormant"].nonzero()[0].tolist()
    row = P[int(d.inputs[n, i])]
    assert d.meta["floor"][n, i] == pytest.approx(float(-(row * row.log()).sum()))
    assert (d.meta["floor"][d.meta["trigger"]] == 0).all()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"length": 2}, "length must be >= 3"),
    ({"n_triggers": 64}, "n_triggers must be an integer in 1 .. vocab - 1 = 63"),
    ({"n_triggers": 0}, "n_triggers must be an integer in 1 .. vocab - 1"),
    ({"vocab": 1}, "vocab must be an integer >= 2"),
    ({"alpha": 0.0}, "alpha .* must be > 0"),
])
def test_settings_that_cannot_be_generated_fail_clearly(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bigram_backcopy(4, **{"length": 8, **kwargs})
