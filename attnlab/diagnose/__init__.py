"""attnlab.diagnose: every pathology of a model per layer and head, and the report that shows them.

    metrics.py          per-layer metrics of a saved cache (re-exports the themed modules below)
    residual.py         residual-stream norms and growth (Heimersheim & Turner 2023)
    uniformity.py       rank collapse: Dong et al. 2021 ratio, effective / stable rank, cosine
    outliers.py         massive activations (Sun et al. 2024), kurtosis and max |h| (Bondarenko et al. 2023)
    attention_stats.py  entropy, first-token attention and sink rate (Gu et al. 2024), dispersion
    sensitivity.py      over-squashing and the representational-collapse probe (Barbero et al. 2024)
    lipschitz.py        local Lipschitz constants by power iteration (Kim et al. 2021, Castin et al. 2024)
    quantize.py         int8 fake quantization and the loss it costs
    ablate.py           MLP / skip-connection ablations by hooks (Dong et al. 2021)
    report.py           run_report -> report.json + report.html; plots.py and html.py draw the page;
                        report(...) -> Report, shown inline in a notebook
    pattern.py          attention_pattern(model, text, layer, head) -> AttentionPattern (a notebook heatmap)
    cli.py              `attnlab report`

Nothing heavy is imported here; import the module you need (the names below load on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"AttentionPattern": "attnlab.diagnose.pattern", "attention_pattern": "attnlab.diagnose.pattern",
         "Report": "attnlab.diagnose.report", "run_report": "attnlab.diagnose.report"}
# (not `report`: that name is the submodule report.py; the function is attnlab.report)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'attnlab.diagnose' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
