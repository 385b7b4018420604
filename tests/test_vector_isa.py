"""The float64 exactness tests hold whatever vector unit torch's CPU kernels use.

CI runs on whatever x86 machine a session gets (AVX2 or AVX-512). A tolerance that silently relies on one
summation order passes on one and fails on the other, so a cheap subset of the exactness tests is re-run
here in subprocesses under `ATEN_CPU_CAPABILITY=avx2` and `=default` (no explicit vectorisation: a third
summation order that any x86 machine can produce), while the rest of the suite runs under the machine's
own default (AVX-512 where the CPU has it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBSET = [
    "tests/test_attention_exact.py::test_fused_matches_reference",
    "tests/test_attention_exact.py::test_fully_masked_rows_are_zero",
    "tests/test_attention_band.py",
    "tests/test_hf.py::test_logits_equal_sdpa_float64_and_eager_float32",
    "tests/test_stream_cache.py::test_full_policy_equals_uncached_forward",
]


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_exactness_subset_under_capability(capability: str) -> None:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-x", "-p", "no:cacheprovider", *SUBSET]
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    seen = probe.stdout.strip().lower()
    if capability == "avx2" and "avx2" not in seen:
        pytest.skip(f"this CPU cannot run AVX2 kernels (torch reports {seen!r})")
    assert seen == capability.lower(), f"torch did not take ATEN_CPU_CAPABILITY={capability}: {seen}"
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    tail = f"{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    assert res.returncode == 0, f"under ATEN_CPU_CAPABILITY={capability}:\n{tail}"
    assert " passed" in res.stdout
