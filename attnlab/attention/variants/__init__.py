"""Normalizer variants, one file each; every module here is imported with `attnlab.attention` and
registers its normalizer itself (`register_normalizer(name, Class)` at its bottom).

Adding a variant is one new file here plus its test: nothing else names it. A variant with only
`weights` runs everywhere on the reference code (base.Normalizer.attend, the slow path); give it an
`attend` for a fused fast path.
"""

from __future__ import annotations

import importlib
import pkgutil

from attnlab.attention import normalizers  # noqa: F401  (the built-ins register first: menus list them first)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_module}")
