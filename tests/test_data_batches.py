"""LM batches: encoding, the seeded split, (seed, step)-determinism, rank slices, eval windows, errors."""

import pytest
import torch

from attnlab.data.batches import LMBatches, encode_corpus, eval_batches, split_tokens
from attnlab.data.tokenizers import ByteTokenizer
from attnlab.errors import DataError


def test_encode_corpus_matches_tokenizer():
    text = "Thus conscience does make cowards — of us all ✓"
    tok = ByteTokenizer()
    ids = encode_corpus(text, tok)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert ids.tolist() == tok.encode(text)


class _WordTokenizer:  # any object with encode() works, not only the byte tokenizer
    name, vocab_size, eos_id = "words", 100, None

    def encode(self, text):
        return [len(w) for w in text.split()]


def test_encode_corpus_generic_and_empty():
    assert encode_corpus("a bb ccc", _WordTokenizer()).tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="encodes to no tokens"):
        encode_corpus("   ", _WordTokenizer())


@pytest.mark.parametrize("n", [37, 1000, 12345])
def test_split_partitions_and_is_deterministic(n):
    tokens = torch.arange(n)  # unique values: membership identifies positions
    train, val = split_tokens(tokens, val_fraction=0.1, seed=3)
    assert train.numel() + val.numel() == n
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(n))
    assert 0 < val.numel() < n
    # each split keeps the original order (blocks concatenated in place)
    assert bool((train.diff() > 0).all()) and bool((val.diff() > 0).all())
    again = split_tokens(tokens, val_fraction=0.1, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)


def test_split_depends_on_seed_and_spreads_over_corpus():
    tokens = torch.arange(10_000)
    vals = [split_tokens(tokens, 0.1, seed=s)[1] for s in range(4)]
    assert len({tuple(v.tolist()) for v in vals}) == 4
    assert all(abs(v.numel() - 1000) <= 100 for v in vals)
    # blocks are scattered, not simply the tail of the text
    assert any(v.min().item() < 5000 for v in vals)


def test_split_fraction_zero_and_bad_fraction():
    tokens = torch.arange(100)
    train, val = split_tokens(tokens, val_fraction=0.0)
    assert torch.equal(train, tokens) and val.numel() == 0
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        split_tokens(tokens, val_fraction=1.0)


def test_batches_are_pure_in_seed_and_step():
    tokens = torch.arange(5000)
    a, b = LMBatches(tokens, 16, 8, seed=1), LMBatches(tokens, 16, 8, seed=1)
    later_first = [b.batch(s) for s in (7, 3, 0)][::-1]  # order of calls must not matter
    for (xa, ya), (xb, yb) in zip([a.batch(s) for s in (0, 3, 7)], later_first):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])
    assert not torch.equal(a.batch(0)[0], LMBatches(tokens, 16, 8, seed=2).batch(0)[0])


def test_batch_shapes_and_shift():
    tokens = torch.randint(0, 256, (3000,), generator=torch.Generator().manual_seed(0))
    x, y = LMBatches(tokens, 32, 6, seed=0).batch(11)
    assert x.shape == y.shape == (6, 32) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    # every row is a contiguous window of the stream, and y ends one token further
    ramp = LMBatches(torch.arange(3000), 32, 6, seed=0)
    xr, yr = ramp.batch(11)
    assert torch.equal(yr, xr + 1) and bool((xr.diff(dim=1) == 1).all())
    assert xr[:, 0].min() >= 0 and yr[:, -1].max() <= 2999


def test_global_batch_does_not_depend_on_world_size():
    data = LMBatches(torch.arange(4000), 8, 12, seed=5)
    full_x, full_y = data.batch(4)
    for w in (1, 2, 3, 4, 6, 12):
        parts = [data.batch(4, rank=r, world_size=w) for r in range(w)]
        assert all(p[0].shape == (12 // w, 8) for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), full_x)
        assert torch.equal(torch.cat([p[1] for p in parts]), full_y)


def test_rank_errors():
    data = LMBatches(torch.arange(100), 8, 6)
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by world_size 4"):
        data.batch(0, rank=0, world_size=4)
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        data.batch(0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="step must be >= 0"):
        data.batch(-1)


def test_too_short_text():
    with pytest.raises(DataError, match=r"text has 8 tokens but one context needs context\+1 = 9; "
                       r"use a longer text or a smaller --context"):
        LMBatches(torch.arange(8), context=8, batch_size=2)
    LMBatches(torch.arange(9), context=8, batch_size=2).batch(0)  # exactly enough works
    with pytest.raises(DataError, match="validation text has 5 tokens"):
        eval_batches(torch.arange(5), context=8, batch_size=2)


def test_eval_batches_cover_without_overlap():
    tokens = torch.arange(1000)
    batches = eval_batches(tokens, context=64, batch_size=4)
    xs = torch.cat([x for x, _ in batches])
    ys = torch.cat([y for _, y in batches])
    assert xs.shape[0] == (1000 - 1) // 64 and all(x.shape[0] <= 4 for x, _ in batches)
    assert torch.equal(ys, xs + 1)
    assert torch.equal(xs.flatten(), torch.arange(xs.numel()))  # consecutive, non-overlapping windows
    again = eval_batches(tokens, context=64, batch_size=4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert len(eval_batches(tokens, context=64, batch_size=4, max_batches=2)) == 2
    assert torch.equal(eval_batches(tokens, 64, 4, max_batches=2)[1][0], batches[1][0])
