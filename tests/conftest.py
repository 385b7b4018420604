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
