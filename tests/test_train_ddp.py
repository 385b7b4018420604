"""Data-parallel training: `torchrun --nproc_per_node=2 -m attnlab train` on CPU (gloo) ends with the
parameters of single-process training on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from attnlab.models.gpt import GPT, GPTConfig
from attnlab.train import TrainConfig, train

TEXT = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 12


pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    flags = ["--layers", "2", "--d-model", "32", "--heads", "4", "--context", "16", "--steps", "3",
             "--batch-size", "4", "--lr", "1e-3", "--warmup", "1", "--eval-every", "0",
             "--normalizer", "softmax1", "--text", str(text), "--device", "cpu"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "attnlab", "train", *flags,
           "--out", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("trained 3 steps") == 1  # rank 0 alone reports

    model = GPTConfig(n_layers=2, d_model=32, n_heads=4, context=16, normalizer="softmax1")
    config = TrainConfig(model=model, steps=3, batch_size=4, lr=1e-3, warmup=1, eval_every=0, text=str(text),
                         device="cpu")
    single = train(config, progress=False)["model"]
    ddp = GPT.from_pretrained(tmp_path / "ddp" / "checkpoint")
    for (name, a), b in zip(single.state_dict().items(), ddp.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    fresh = GPT(single.config)
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(single.parameters(), fresh.parameters()))
    assert moved > 1e-4  # the comparison is not between two untrained models


STUDY_SCRIPT = """
import sys, torch
from attnlab.data.batches import LMBatches
from attnlab.experiments.common import lm_loss, train_loop
from attnlab.models.gpt import GPT, GPTConfig

torch.set_num_threads(1)
tokens = torch.randint(0, 32, (3000,), generator=torch.Generator().manual_seed(1))
model = GPT(GPTConfig(vocab_size=32, n_layers=2, d_model=32, n_heads=2, context=16, normalizer="softmax1"))
log = train_loop(model, LMBatches(tokens, 16, 4, seed=0).batch, lm_loss, steps=3, lr=3e-3, warmup=1,
                 log_every=1, progress=False, device="cpu")
if torch.distributed.get_rank() == 0:
    torch.save({"state": model.state_dict(), "curve": log["curve"]}, sys.argv[1])
"""


@pytest.mark.slow
def test_study_train_loop_under_two_processes_matches_one(tmp_path):
    """A study's training step (experiments.common.train_loop on the one trainer) under torchrun: 2 gloo
    processes, each on half of every batch, end with one process's parameters and loss curve."""
    from attnlab.data.batches import LMBatches
    from attnlab.experiments.common import lm_loss, train_loop

    script = tmp_path / "study.py"
    script.write_text(STUDY_SCRIPT)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), str(tmp_path / "ddp.pt")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)

    tokens = torch.randint(0, 32, (3000,), generator=torch.Generator().manual_seed(1))
    model = GPT(GPTConfig(vocab_size=32, n_layers=2, d_model=32, n_heads=2, context=16,
                          normalizer="softmax1"))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    log = train_loop(model, LMBatches(tokens, 16, 4, seed=0).batch, lm_loss, steps=3, lr=3e-3, warmup=1,
                     log_every=1, progress=False, device="cpu")
    for name, a in model.state_dict().items():
        torch.testing.assert_close(a, ddp["state"][name], atol=1e-5, rtol=0,
                                   msg=lambda m, n=name: f"{n}: {m}")
    assert [s for s, _ in ddp["curve"]] == [0, 1, 2]
    for (_, one), (_, two) in zip(log["curve"], ddp["curve"]):
        assert abs(one - two) < 1e-5  # the logged loss is the mean over both ranks' halves
    moved = max(float((model.state_dict()[k] - v).abs().max()) for k, v in fresh.items())
    assert moved > 1e-4  # the comparison is not between two untrained models
