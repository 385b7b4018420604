"""Synthetic tasks: labels recomputed independently from the inputs, determinism per seed, bad arguments."""

import pytest
import torch

from attnlab.data.synthetic import (
    IGNORE_INDEX,
    SYNTHETIC_TASKS,
    TaskData,
    accuracy,
    copy_first,
    copy_last,
    count_ones,
    max_retrieval,
    passkey,
    sample_correct,
)

SMALL = {
    "max_retrieval": dict(n_items=16),
    "copy_first": dict(length=12),
    "copy_last": dict(length=12),
    "count_ones": dict(length=12),
    "passkey": dict(length=40),
}


def _check_layout(data: TaskData, n_scored: int):
    N, T = data.inputs.shape
    assert data.targets.shape == data.mask.shape == (N, T)
    assert data.inputs.dtype == data.targets.dtype == torch.long and data.mask.dtype == torch.bool
    assert torch.equal(data.mask, data.targets != IGNORE_INDEX)
    assert bool(data.mask[:, -n_scored:].all()) and not bool(data.mask[:, :-n_scored].any())
    assert int(data.inputs.min()) >= 0 and int(data.inputs.max()) < data.vocab_size
    assert int(data.targets[data.mask].max()) < data.vocab_size


@pytest.mark.parametrize("name", sorted(SYNTHETIC_TASKS))
def test_deterministic_per_seed(name):
    make = SYNTHETIC_TASKS[name]
    a, b, c = (make(64, seed=s, **SMALL[name]) for s in (7, 7, 8))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_generators_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for name, make in SYNTHETIC_TASKS.items():
        make(8, seed=1, **SMALL[name])
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("n_items", [1, 2, 16, 4096])
def test_max_retrieval_labels(n_items):
    n_samples = 8 if n_items == 4096 else 200
    data = max_retrieval(n_samples, n_items, seed=n_items, n_priorities=32, n_values=8)
    _check_layout(data, 1)
    assert data.inputs.shape == (n_samples, n_items + 1)
    assert bool((data.inputs[:, -1] == data.vocab["query"]).all())
    item = data.inputs[:, :-1] - data.vocab["item_base"]
    assert bool((item >= 0).all())
    prio, value = item // 8, item % 8
    top = prio.max(dim=1).values
    assert bool(((prio == top[:, None]).sum(dim=1) == 1).all()), "the maximum must be unique"
    winner = prio.argmax(dim=1)
    expected = value[torch.arange(n_samples), winner]
    assert torch.equal(data.labels, expected)
    assert torch.equal(data.targets[:, -1], data.vocab["answer_base"] + expected)
    assert torch.equal(data.meta["winner_pos"], winner)
    assert data.vocab_size == 2 + 8 + 32 * 8


def test_max_retrieval_spreads_answers_and_positions():
    data = max_retrieval(2000, 16, seed=0)
    assert set(data.labels.tolist()) == set(range(data.meta["n_values"]))
    assert data.vocab_size == 2 + data.meta["n_values"] * (1 + data.meta["n_priorities"])
    assert set(data.meta["winner_pos"].tolist()) == set(range(16))


@pytest.mark.parametrize("length", [2, 5, 64])
def test_copy_first_and_last_labels(length):
    first, last = copy_first(300, length, seed=1), copy_last(300, length, seed=1)
    for data, pos in ((first, 0), (last, length - 1)):
        _check_layout(data, 1)
        assert data.inputs.shape == (300, length + 1)
        assert bool((data.inputs[:, -1] == 2).all())
        bits = data.inputs[:, :-1]
        assert torch.equal(data.labels, bits[:, pos])
        assert torch.equal(data.targets[:, -1], bits[:, pos])
        others = torch.cat([bits[:, :pos], bits[:, pos + 1:]], dim=1)
        assert bool((others == 1).all())
        assert set(data.labels.tolist()) == {0, 1}
    # the paper's sequences: "0 1 1 ... 1" -> 0, "1 ... 1 0" -> 0
    zero_first = first.inputs[first.labels == 0][0, :-1].tolist()
    assert zero_first == [0] + [1] * (length - 1)
    zero_last = last.inputs[last.labels == 0][0, :-1].tolist()
    assert zero_last == [1] * (length - 1) + [0]


@pytest.mark.parametrize("p_one", [None, 0.3, 1.0])
def test_count_ones_labels(p_one):
    data = count_ones(400, 10, seed=2, p_one=p_one, max_count=32)
    _check_layout(data, 1)
    bits = data.inputs[:, :-1]
    assert set(bits.unique().tolist()) <= {0, 1}
    count = sum(int(b) for b in bits[0])
    assert data.labels[0].item() == count
    assert torch.equal(data.labels, (bits == 1).sum(dim=1))
    assert torch.equal(data.targets[:, -1], 3 + data.labels)
    assert data.vocab_size == 3 + 33
    if p_one == 1.0:
        assert bool((data.labels == 10).all())
    if p_one is None:  # every count 0..length appears
        assert set(data.labels.tolist()) == set(range(11))


@pytest.mark.parametrize("length,n_digits", [(11, 5), (12, 5), (64, 5), (200, 3)])
def test_passkey_labels(length, n_digits):
    data = passkey(100, length, seed=length, n_digits=n_digits)
    _check_layout(data, n_digits)
    key, query = data.vocab["key"], data.vocab["query"]
    rows = zip(data.inputs.tolist(), data.labels.tolist(), data.meta["key_pos"].tolist())
    for row, digits, key_pos in rows:
        assert len(row) == length
        assert row.count(key) == 1 and row.count(query) == 1
        k = row.index(key)
        assert k == key_pos
        assert row[k + 1:k + 1 + n_digits] == digits
        q = row.index(query)
        assert q == length - n_digits
        assert row[q + 1:] == digits[:-1]
        filler = row[:k] + row[k + 1 + n_digits:q]
        assert len(filler) == length - 2 * n_digits - 1
        assert all(data.vocab["filler_base"] <= t < data.vocab_size for t in filler)
    assert torch.equal(data.targets[:, -n_digits:], data.labels)


def test_passkey_depth():
    n_fill = 50 - 2 * 5 - 1
    assert bool((passkey(10, 50, seed=0, depth=0.0).meta["key_pos"] == 0).all())
    end = passkey(10, 50, seed=0, depth=1.0)
    assert bool((end.meta["key_pos"] == n_fill).all())
    assert bool((end.inputs[:, n_fill + 1 + 5] == end.vocab["query"]).all())  # needle right before QUERY
    spread = passkey(500, 50, seed=0).meta["key_pos"]
    assert spread.min() == 0 and spread.max() == n_fill


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: copy_first(4, 1), r"length must be >= 2"),
        (lambda: copy_last(4, 0), r"length must be >= 2"),
        (lambda: count_ones(4, 0), r"length must be >= 1"),
        (lambda: count_ones(4, 10, max_count=5), r"max_count \(5\) must be >= length \(10\)"),
        (lambda: count_ones(4, 10, p_one=1.5), r"p_one must be in \[0, 1\]"),
        (lambda: passkey(4, 10, n_digits=5), r"length must be >= 11"),
        (lambda: passkey(4, 40, depth=2.0), r"depth must be in \[0, 1\]"),
        (lambda: max_retrieval(4, 0), r"n_items must be a positive integer"),
        (lambda: max_retrieval(4, 8, n_priorities=1), r"n_priorities must be >= 2"),
        (lambda: max_retrieval(0, 8), r"n_samples must be a positive integer"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_seed_must_be_int():
    with pytest.raises(TypeError, match="seed must be an int"):
        copy_first(4, 8, seed=1.5)
    numpy = pytest.importorskip("numpy")
    from_numpy = copy_first(4, numpy.int64(8), seed=numpy.int64(3))
    assert torch.equal(from_numpy.inputs, copy_first(4, 8, seed=3).inputs)


def test_accuracy_and_subset():
    data = passkey(20, 30, seed=0, n_digits=3)
    perfect = torch.nn.functional.one_hot(data.targets.clamp(min=0), data.vocab_size).float()
    assert accuracy(perfect, data) == 1.0
    wrong = perfect.clone()
    wrong[:5, -1] = wrong[:5, -1].roll(1, dims=-1)  # last digit wrong in 5 samples
    assert torch.equal(sample_correct(wrong, data), torch.arange(20) >= 5)
    assert accuracy(wrong, data) == pytest.approx(0.75)
    part = data.subset(slice(5, 9))
    assert len(part) == 4 and torch.equal(part.inputs, data.inputs[5:9])
    assert torch.equal(part.meta["key_pos"], data.meta["key_pos"][5:9])
    with pytest.raises(ValueError, match="do not match"):
        accuracy(perfect[:, :-1], data)
    moved = data.to(torch.device("meta"))
    assert moved.inputs.device.type == moved.meta["key_pos"].device.type == "meta"
    assert moved.vocab == data.vocab
