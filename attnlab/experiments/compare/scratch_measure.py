"""What part 1 measures on the held-out Bigram-Backcopy sequences (each sequence is one item, nested in its
seed): per item, for every arm, the numbers its claims and tables read.

Queries are split as the task splits them (`attnlab.data.backcopy`): *dormant* positions (the input token
is not a trigger: the next token follows the chain, attention has nothing to do) and *active* ones (a
trigger: the next token is a backcopy). Per item:

- `first_token_dormant` / `first_token_active`: the attention weight on the first token (BOS) at dormant /
  active queries, of the *sink head*: the (layer, head) with the most first-token weight at dormant
  queries over all held-out items, chosen per arm and seed (with one head, that head). Every head's values
  are kept in `heads_dormant` / `heads_active` (layer-major).
- `row_deficit`: 1 - row sum at dormant queries, mean over heads: the weight put on no key (softmax1,
  sinks, softpick) or clipped away (clipped, can be negative); exactly 0 for arms whose rows sum to 1.
- `resid_peak`: max over layers of ||h_0|| / median_{t>=1} ||h_t|| (`diagnose.peaks.norm_peak`), the
  residual-state peak; `value_drain`: ||v_0|| / median_{t>=1} ||v_t|| of the sink head's layer, mean over
  key/value heads (a small value is the value-state drain, Guo et al. 2024).
- `massive_tok0`, `massive_rest`: max over layers of the largest |h| over the median |h|, token 0 and the
  others (Sun et al. 2024); `kurtosis_token`: mean over layers and tokens >= 1 of the per-token kurtosis,
  `kurtosis_tok0` token 0's (`diagnose.peaks`).
- `int8_damage`: NLL under W8A8 fake quantization (weights per tensor, activations per tensor with the
  scale from this one sequence, so items stay independent) minus the float NLL, nats/token.
- `loss` (all scored positions), `loss_excess` (dormant positions, minus the chain's entropy: 0 is the
  best any model can do), `backcopy_acc` (argmax at active positions).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.data.synthetic import TaskData

ITEM_KEYS = ("first_token_dormant", "first_token_active", "row_deficit", "resid_peak", "value_drain",
             "massive_tok0", "massive_rest", "kurtosis_token", "kurtosis_tok0", "int8_damage", "loss",
             "loss_excess", "backcopy_acc")


def _v_hooks(model: nn.Module, store: dict[int, Tensor]) -> list[Any]:
    handles = []
    for i, block in enumerate(model.blocks):
        def hook(_m: nn.Module, _args: tuple, out: Tensor, i: int = i) -> None:
            store[i] = out.detach()
        handles.append(block.attn.v_proj.register_forward_hook(hook))
    return handles


def _per_item_nll(logits: Tensor, data: TaskData) -> Tensor:
    """(N, T) token NLL, 0 where unscored."""
    t = data.targets.clamp_min(0)
    nll = F.cross_entropy(logits.double().transpose(1, 2), t, reduction="none")
    return nll * data.mask


def _masked_mean(x: Tensor, m: Tensor) -> Tensor:
    """(N, ...) mean over the positions dim 1 where m (N, T) is True; NaN for an item without any."""
    m = m.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    return (x * m).sum(dim=1) / m.sum(dim=1)


@torch.no_grad()
def measure_arm(model: nn.Module, data: TaskData, deficit: str | None) -> dict[str, Any]:
    """Per-item lists (ITEM_KEYS) and per-head / per-layer means for one trained model on held-out data."""
    from attnlab.diagnose.peaks import massive_ratio, norm_peak, token_kurtosis
    from attnlab.diagnose.quantize import fake_quant
    from attnlab.models.hooks import pattern_name, record_attention

    model.eval()
    vs: dict[int, Tensor] = {}
    handles = _v_hooks(model, vs)
    try:
        with record_attention() as rec:
            logits, _, hidden = model(data.inputs, return_hidden=True)
    finally:
        for h in handles:
            h.remove()
    L = len(hidden)
    dorm, act = data.meta["dormant"], data.meta["trigger"]
    P = [rec[pattern_name(l)].double() for l in range(L)]  # each (N, H, T, T)
    first = torch.stack([p[..., 0] for p in P], dim=1)  # (N, L, H, T)
    N, _, H, T = first.shape
    heads_d = _masked_mean(first.permute(0, 3, 1, 2), dorm)  # (N, L, H)
    heads_a = _masked_mean(first.permute(0, 3, 1, 2), act)
    flat = heads_d.reshape(N, L * H)
    sink = int(torch.nanmean(flat, dim=0).argmax())
    layer = sink // H
    rows = torch.stack([p.sum(dim=-1) for p in P], dim=1)  # (N, L, H, T)
    deficit_d = _masked_mean((1.0 - rows).mean(dim=(1, 2)).unsqueeze(-1), dorm).squeeze(-1)
    if deficit is None:
        deficit_d = torch.zeros(N, dtype=torch.float64)  # rows sum to 1 by construction
    peaks = torch.stack([norm_peak(h) for h in hidden], dim=1)  # (N, L)
    mass = [massive_ratio(h) for h in hidden]
    kurt = [token_kurtosis(h) for h in hidden]
    v = vs[layer].double()  # (N, T, Hkv * D)
    kv = model.blocks[layer].attn.n_kv_heads
    vn = v.view(N, T, kv, -1).norm(dim=-1)  # (N, T, Hkv)
    drain = (vn[:, 0] / vn[:, 1:].median(dim=1).values.clamp_min(1e-300)).mean(dim=-1)
    nll = _per_item_nll(logits, data)
    scored = data.mask.double().sum(dim=1)
    loss = nll.sum(dim=1) / scored
    floor = data.meta["floor"]
    excess = ((nll - floor) * dorm).sum(dim=1) / dorm.double().sum(dim=1).clamp_min(1)
    hit = (logits.argmax(-1) == data.targets) & act
    acc = hit.double().sum(dim=1) / act.double().sum(dim=1)  # NaN for an item without a trigger
    damage = []
    with fake_quant(model, weights=True, activations=True, granularity="tensor"):
        for n in range(N):  # one sequence per forward: its activation scales are its own
            one = data.subset(slice(n, n + 1))
            q_logits = model(one.inputs)[0]
            damage.append(float(_per_item_nll(q_logits, one).sum() / one.mask.sum()) - float(loss[n]))
    items = {
        "first_token_dormant": flat[:, sink], "first_token_active": heads_a.reshape(N, L * H)[:, sink],
        "row_deficit": deficit_d, "resid_peak": peaks.amax(dim=1), "value_drain": drain,
        "massive_tok0": torch.stack([m[0] for m in mass], 1).amax(dim=1),
        "massive_rest": torch.stack([m[1] for m in mass], 1).amax(dim=1),
        "kurtosis_token": torch.stack([k[1] for k in kurt], 1).mean(dim=1),
        "kurtosis_tok0": torch.stack([k[0] for k in kurt], 1).mean(dim=1),
        "int8_damage": torch.tensor(damage, dtype=torch.float64), "loss": loss, "loss_excess": excess,
        "backcopy_acc": acc,
    }
    out: dict[str, Any] = {k: [_num(x) for x in items[k].tolist()] for k in ITEM_KEYS}
    out["sink_head"] = {"layer": layer, "head": sink % H}
    out["heads_dormant"] = torch.nanmean(heads_d, dim=0).tolist()  # (L, H)
    out["heads_active"] = torch.nanmean(heads_a, dim=0).tolist()
    out["resid_peak_layer"] = peaks.mean(dim=0).tolist()  # (L,)
    return out


def _num(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


@torch.no_grad()
def sink_probe(model: nn.Module, data: TaskData) -> float:
    """The largest mean first-token weight at dormant queries over heads: one point of the training curve."""
    from attnlab.models.hooks import pattern_name, record_attention

    was = model.training
    model.eval()
    with record_attention() as rec:
        model(data.inputs)
    model.train(was)
    dorm = data.meta["dormant"]
    best = 0.0
    for l in range(len(model.blocks)):
        first = rec[pattern_name(l)][..., 0].double()  # (N, H, T)
        per_head = (first * dorm.unsqueeze(1)).sum(dim=(0, 2)) / dorm.sum()
        best = max(best, float(per_head.max()))
    return best


__all__ = ["ITEM_KEYS", "measure_arm", "sink_probe"]
