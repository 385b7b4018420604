"""The fused backend on CUDA against the float64 reference on CPU, forward and gradients, for every normalizer
and span, in float32 (memory-efficient kernel), bfloat16 (flash kernel, or memory-efficient with a bias) and
float64 (plain matrix path). Skipped without a GPU; `benchmarks/gpu_check.sh` runs it on one.

Tolerance, as in test_attention_lowprec.py: the error against the float64 reference is at most twice that of
stock SDPA in the same dtype on the same inputs, plus a small slack, relative to the reference's scale."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from _attention_cases import normalizers

from attnlab.attention import ScalableSoftmax, Sinks, Window, attention

# ATTNLAB_TEST_DEVICE=cpu runs the same checks on the CPU kernels (a check of the test itself).
DEVICE = os.environ.get("ATTNLAB_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA device")

SLACK = {torch.float64: 1e-9, torch.float32: 2e-4, torch.bfloat16: 2e-2}
SPANS = ["causal", "full", Window(40), "sinkwindow(4,40)", "chunked(64)"]
SHAPES = [(2, 150, 150, 2), (1, 40, 170, 4)]  # (batch, q_len, kv_len, kv_heads): self-attention, cache


def _rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.detach().cpu().double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def _run(norm: object, span: object, inputs: list[torch.Tensor], backend: str,
         grad_out: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    params = []
    if isinstance(norm, Sinks):
        norm = Sinks(norm.logits.detach().to(leaves[0]).requires_grad_())
        params = [norm.logits]
    elif isinstance(norm, ScalableSoftmax):
        norm = ScalableSoftmax(norm.s.detach().to(leaves[0]).requires_grad_())
        params = [norm.s]
    out = attention(*leaves, normalizer=norm, span=span, backend=backend)
    out.backward(grad_out.to(out))
    return out, [x.grad for x in leaves + params]


def _sdpa_errors(inputs: list[torch.Tensor], grad_out: torch.Tensor, dtype: torch.dtype) -> list[float]:
    """Stock SDPA's relative errors (output, dq, dk, dv) in `dtype` on CUDA vs float64 on CPU."""
    def run(xs: list[torch.Tensor]) -> list[torch.Tensor]:
        leaves = [x.detach().clone().requires_grad_() for x in xs]
        out = F.scaled_dot_product_attention(*leaves, is_causal=leaves[0].shape[2] == leaves[1].shape[2],
                                             enable_gqa=True)
        out.backward(grad_out.to(out))
        return [out] + [x.grad for x in leaves]
    ref = run([x.double() for x in inputs])
    got = run([x.to(DEVICE, dtype) for x in inputs])
    return [_rel_error(a, b) for a, b in zip(got, ref, strict=True)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}q{}k{}h{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("span", SPANS, ids=str)
@pytest.mark.parametrize("norm_name", list(normalizers()))
def test_cuda_fused_matches_reference(norm_name: str, span: object, dtype: torch.dtype,
                                      shape: tuple[int, int, int, int]) -> None:
    batch, q_len, kv_len, kv_heads = shape
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, 4, q_len, 64, generator=g, dtype=torch.float64)
    k, v = (torch.randn(batch, kv_heads, kv_len, 64, generator=g, dtype=torch.float64) for _ in range(2))
    # The reference sees the same rounded inputs, so only the arithmetic differs.
    inputs = [x.to(dtype).double() for x in (q, k, v)]
    grad_out = torch.randn(batch, 4, q_len, 64, generator=g, dtype=torch.float64).to(dtype).double()
    ref_out, ref_grads = _run(normalizers()[norm_name], span, inputs, "reference", grad_out)
    out, grads = _run(normalizers()[norm_name], span, [x.to(DEVICE, dtype) for x in inputs], "fused",
                      grad_out.to(DEVICE))
    assert out.dtype == dtype and out.device.type == DEVICE
    base = _sdpa_errors(inputs, grad_out, dtype)
    names = ["out", "dq", "dk", "dv", "dparam"]
    errors = [_rel_error(out, ref_out)] + [_rel_error(a, b) for a, b in zip(grads, ref_grads, strict=True)]
    if norm_name == "clipped" and dtype == torch.bfloat16:
        # clip()'s derivative jumps where (zeta - gamma) p + gamma crosses 0 or 1, and bfloat16 moves many p
        # across it: gradients are not comparable at this precision, so only the output is checked.
        names, errors = names[:1], errors[:1]
    for name, err, b in zip(names, errors, base + [max(base[1:])], strict=False):
        # A parameter's gradient sums over every score with cancellation: relative error grows with it.
        slack = SLACK[dtype] * (3 if name == "dparam" else 1)
        assert err <= 2 * b + slack, f"{name}: relative error {err:.2e} vs SDPA's {b:.2e}"


@pytest.mark.parametrize("norm_name", ["softmax1", "sinks"])
def test_gpt_training_step_on_device_takes_fused_path(norm_name: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPT training step on the device routes softmax1/sinks through the fused backward (not the O(T^2)
    reference) and its gradients match the same model in float64 on the CPU."""
    import attnlab.models.hooks as hooks
    from attnlab.models.gpt import GPT
    from attnlab.models.gpt_config import GPTConfig

    backends: list[str] = []
    real = hooks.attention

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        backends.append(str(kwargs.get("backend", "auto")))
        return real(*args, **kwargs)

    monkeypatch.setattr(hooks, "attention", spy)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, n_layers=2, d_model=64, n_heads=2, context=96, normalizer=norm_name)
    ref_model = GPT(cfg).double()
    model = GPT(cfg)
    model.load_state_dict(ref_model.state_dict())
    model = model.to(DEVICE)
    idx = torch.randint(0, 64, (2, 96), generator=torch.Generator().manual_seed(1))
    _, ref_loss = ref_model(idx, idx)
    ref_loss.backward()
    _, loss = model(idx.to(DEVICE), idx.to(DEVICE))
    loss.backward()
    assert backends and set(backends) == {"auto"}, backends
    assert abs(loss.item() - ref_loss.item()) <= 1e-4 * abs(ref_loss.item())
    ref_params = dict(ref_model.named_parameters())
    for name, p in model.named_parameters():
        assert _rel_error(p.grad, ref_params[name].grad) <= 1e-3, name
