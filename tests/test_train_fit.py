"""The one training core, `attnlab.train.fit`: the studies' numbers unchanged, a Hugging Face causal LM
fine-tuned and resumed, frozen parameters left alone, non-finite values stopped, progress lines."""

from __future__ import annotations

import io
import math

import pytest
import torch

from attnlab.data.batches import LMBatches
from attnlab.experiments.common import lm_loss, train_loop
from attnlab.models.gpt import GPT, GPTConfig
from attnlab.train.fit import TrainingDiverged, causal_lm_loss, fit, lr_at
from attnlab.train.progress import Progress

pytestmark = pytest.mark.usefixtures("one_thread")


def _old_train_loop(model, batch_fn, loss_fn, *, steps, lr, warmup=50, weight_decay=0.1, schedule="cosine",
                    log_every=25):
    """experiments.common.train_loop as it was before the one trainer (commit 98a3b62), progress removed:
    the reference the studies' numbers must keep matching bitwise."""
    def old_lr(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        if schedule == "constant":
            return lr
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    model.train()
    curve = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = old_lr(step)
        x, y = batch_fn(step)
        loss = loss_fn(model, x, y)
        if not torch.isfinite(loss):
            return {"curve": curve, "diverged_at": step, "steps": step}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            curve.append([step, loss.item()])
    model.eval()
    return {"curve": curve, "diverged_at": None, "steps": steps}


def _tiny_gpt(**kw) -> GPT:
    return GPT(GPTConfig(vocab_size=32, n_layers=2, d_model=32, n_heads=2, context=16, **kw))


@pytest.mark.parametrize(("schedule", "normalizer"), [("cosine", "softmax1"), ("constant", "sinks")])
def test_train_loop_matches_the_old_loop_bitwise(schedule, normalizer):
    tokens = torch.randint(0, 32, (2000,), generator=torch.Generator().manual_seed(1))
    batches = LMBatches(tokens, 16, 4, seed=0)
    kw = dict(steps=5, lr=3e-3, warmup=2, schedule=schedule, log_every=1)
    new_model, old_model = _tiny_gpt(normalizer=normalizer, dropout=0.1), _tiny_gpt(normalizer=normalizer,
                                                                                    dropout=0.1)
    torch.manual_seed(5)  # dropout draws from the caller's stream, in both loops
    new = train_loop(new_model, batches.batch, lm_loss, progress=False, **kw)
    after_new = torch.rand(2)
    torch.manual_seed(5)
    old = _old_train_loop(old_model, batches.batch, lm_loss, **kw)
    after_old = torch.rand(2)
    assert new["curve"] == old["curve"] and len(new["curve"]) == 5
    assert new["diverged_at"] is None and new["steps"] == 5
    for (name, a), b in zip(new_model.state_dict().items(), old_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(after_new, after_old)  # the caller's RNG stream advanced the same way
    assert not new_model.training


def test_schedule_warmup_cosine_floor_and_constant():
    assert lr_at(0, steps=110, lr=1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(10, steps=110, lr=1.0, warmup=10) == 1.0
    assert lr_at(60, steps=110, lr=1.0, warmup=10) == pytest.approx(0.55)
    assert lr_at(110, steps=110, lr=1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(500, steps=110, lr=1.0, warmup=10, min_lr_ratio=0.0) == 0.0
    assert lr_at(60, steps=110, lr=2.0, warmup=10, schedule="constant") == 2.0


# ---------------------------------------------------------------- a Hugging Face causal LM
def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _periodic_batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    starts = torch.randint(0, 8, (4, 1), generator=g)
    rows = (starts + torch.arange(17)) % 8  # an easy stream: token t+1 = token t + 1 (mod 8)
    return rows[:, :-1], rows[:, 1:]


def test_causal_lm_loss_equals_hugging_face_labels_loss():
    model = _tiny_llama()
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    y = torch.cat([x[:, 1:], torch.full((2, 1), -100)], dim=1)  # HF's labels=x shifts the same way
    ours = causal_lm_loss(model, x, y)
    theirs = model(input_ids=x, labels=x).loss
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_fits_a_hugging_face_llama_and_resumes_it_exactly(tmp_path):
    kw = dict(steps=6, lr=1e-2, warmup=2, device="cpu", seed=0, progress=False, log_every=1)
    straight = fit(_tiny_llama(), causal_lm_loss, _periodic_batches, out=tmp_path / "a", **kw)

    class Crash(Exception):
        pass

    def crash_at_5(step, record):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        fit(_tiny_llama(), causal_lm_loss, _periodic_batches, out=tmp_path / "b", save_every=3,
            on_step=crash_at_5, **kw)
    resumed = fit(_tiny_llama(), causal_lm_loss, _periodic_batches, out=tmp_path / "b", resume=True, **kw)
    assert resumed["start_step"] == 3 and resumed["steps"] == 6
    assert resumed["curve"] == straight["curve"]  # bitwise: weights, AdamW state, RNG and curve restored
    for (name, a), b in zip(straight["model"].state_dict().items(), resumed["model"].state_dict().values()):
        assert torch.equal(a, b), name
    assert straight["curve"][-1][1] < straight["curve"][0][1]
    assert (tmp_path / "a" / "checkpoint" / "config.json").is_file()  # save_pretrained's format
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "checkpoint")
    for (name, a), b in zip(straight["model"].state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert straight["tokens"] == 6 * 4 * 16 and straight["tokens_per_s"] > 0


def test_only_trainable_parameters_move():
    model = _tiny_llama()
    model.model.embed_tokens.weight.requires_grad_(False)
    frozen = model.model.embed_tokens.weight.detach().clone()
    before = model.lm_head.weight.detach().clone()
    run = fit(model, causal_lm_loss, _periodic_batches, steps=3, lr=1e-2, warmup=1, device="cpu",
              progress=False)
    assert torch.equal(model.model.embed_tokens.weight, frozen)
    assert not torch.equal(model.lm_head.weight, before)
    in_optimizer = {id(p) for group in run["optimizer"].param_groups for p in group["params"]}
    assert id(model.model.embed_tokens.weight) not in in_optimizer


# ---------------------------------------------------------------- non-finite values
def test_nonfinite_update_raises_with_step_and_cause():
    model = _tiny_gpt()
    tokens = torch.randint(0, 32, (500,), generator=torch.Generator().manual_seed(1))
    batches = LMBatches(tokens, 16, 4)
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+: the (loss|gradient norm|weights) "
                                               r".*no checkpoints were being written"):
        fit(model, lm_loss, batches.batch, steps=5, lr=1e30, warmup=0, device="cpu", progress=False)


def test_train_loop_reports_divergence_without_raising():
    model = _tiny_gpt()
    tokens = torch.randint(0, 32, (500,), generator=torch.Generator().manual_seed(1))
    batches = LMBatches(tokens, 16, 4)
    calls = []

    def loss_fn(m, x, y):
        calls.append(1)
        loss = lm_loss(m, x, y)
        return loss * float("nan") if len(calls) == 3 else loss

    log = train_loop(model, batches.batch, loss_fn, steps=5, lr=1e-3, warmup=1, log_every=1, progress=False)
    assert log["diverged_at"] == 2 and log["steps"] == 2 and [s for s, _ in log["curve"]] == [0, 1]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN loss never reached them


def test_plain_progress_lines_when_not_a_terminal():
    stream = io.StringIO()
    bar = Progress(20, desc="fit", stream=stream)
    for step in range(1, 21):
        bar.update(step, loss=1.0 / step)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("fit: step 1/20 (5%) loss 1.0000")
    assert lines[-1].startswith("fit: step 20/20 (100%) loss 0.0500") and "eta 0s" in lines[-1]
    assert 3 <= len(lines) <= 12
