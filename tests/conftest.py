"""Shared pytest fixtures; generic only (each area keeps its own helpers in its test files)."""

from __future__ import annotations

import random

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state, so a failure reproduces."""
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator for tests that draw their own tensors."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests: on a shared 2-core machine OpenMP threads spin
    against other processes and make tiny forwards tens of times slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
